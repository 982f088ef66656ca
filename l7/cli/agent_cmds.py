"""``l7gate agent``: the node agent (policies + endpoints → datapath), from a lab or from files."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from l7.cli import app


@app.command("agent")
def agent_cmd(  # noqa: PLR0917  (typer options)
    node: Annotated[str, typer.Option("--node", help="The node this agent runs for.")],
    lab: Annotated[
        str | None, typer.Option("--lab", help="Take policies and endpoints from this lab.")
    ] = None,
    policies: Annotated[
        Path | None, typer.Option("--policies", help="Policy directory or file (watched).")
    ] = None,
    endpoints: Annotated[Path | None, typer.Option("--endpoints", help="Endpoints file (watched).")] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Identity state and agent-<node>.json status.")
    ] = None,
    uplink: Annotated[
        str | None, typer.Option("--uplink", help="Files mode: the node's uplink device to attach.")
    ] = None,
    datapath_name: Annotated[
        str | None,
        typer.Option("--datapath-name", help="Files mode: pin directory name (default: the node name)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the node agent until SIGTERM (run it in the node's netns: nsenter --net=/run/netns/NODE).

    Invalid policies or endpoints are logged with their field paths and the last good set stays applied.
    On exit programs and maps stay in place: enforcement continues while the agent is down."""
    from l7.agent.node import AgentConfig, AgentError, lab_config, route_interfaces, run_agent
    from l7.lab import LabError

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s agent[{node}] %(levelname)s %(message)s",
    )
    if os.geteuid() != 0:
        typer.echo("error: the agent needs root (BPF, tc)", err=True)
        raise typer.Exit(1)
    if lab is not None:
        if policies is not None or endpoints is not None:
            typer.echo("error: --lab excludes --policies/--endpoints", err=True)
            raise typer.Exit(2)
        try:
            cfg = lab_config(lab, node, state_dir)
        except (LabError, AgentError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    else:
        if policies is None or endpoints is None:
            typer.echo("error: give --lab NAME or both --policies DIR and --endpoints FILE", err=True)
            raise typer.Exit(2)
        cfg = AgentConfig(
            node=node,
            policies=policies.resolve(),
            endpoints=endpoints.resolve(),
            state_dir=(state_dir or Path("/run/l7gate/agent")).resolve(),
            datapath_name=datapath_name or node,
            interfaces=route_interfaces(node),
            uplink=uplink,
        )
    raise typer.Exit(run_agent(cfg))
