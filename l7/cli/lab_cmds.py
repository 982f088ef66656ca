"""``l7gate lab up|exec|status|apply|down``: build, use and remove a lab (see l7.lab)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from l7.cli import app
from l7.cli.common import EXIT_FAILURE, EXIT_USAGE, Output, OutputOpt, emit
from l7.lab import DEFAULT_LAB, Lab, LabError, TopologyError, down, list_labs

lab_app = typer.Typer(no_args_is_help=True, help="Build and use a lab: nodes and pods as network namespaces.")
app.add_typer(lab_app, name="lab")

console = Console()
UP, DOWN = "[green]up[/green]", "[red]down[/red]"
err = Console(stderr=True)

# ``--lab`` like every other command; ``--name`` is kept as an alias (older scripts, the lab's messages).
NameOpt = Annotated[str, typer.Option("--lab", "--name", help="The lab's name.")]


def _fail(exc: Exception) -> typer.Exit:
    """Exit 1 for an invalid topology or a failed step, 2 for a lab that does not exist."""
    if isinstance(exc, TopologyError):
        err.print(f"[red]{exc.source}: invalid topology[/red]")
        for issue in exc.issues:
            err.print(f"  {issue}", markup=False, highlight=False)
        return typer.Exit(EXIT_FAILURE)
    err.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(EXIT_USAGE if _missing_input(exc) else EXIT_FAILURE)


def _missing_input(exc: Exception) -> bool:
    """A lab, pod or lab name that does not exist or is malformed."""
    from l7.lab.errors import NotFoundError

    return isinstance(exc, NotFoundError)


def _root() -> None:
    if os.geteuid() != 0:
        err.print("[red]error:[/red] the lab needs root (network namespaces)")
        raise typer.Exit(EXIT_USAGE)


def _exists(path: Path, what: str) -> None:
    if not path.exists():
        err.print(f"[red]error:[/red] {what} {path}: no such file or directory", highlight=False)
        raise typer.Exit(EXIT_USAGE)


@lab_app.command("up")
def up_cmd(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file (see deploy/lab/README.md).")],
    name: NameOpt = DEFAULT_LAB,
    policies: Annotated[
        Path | None, typer.Option("--policies", help="Policy directory, handed to the node agents.")
    ] = None,
) -> None:
    """Build the lab and wait until its DNS and servers answer."""
    _exists(topology, "topology")
    if policies is not None:
        _exists(policies, "--policies")
    _root()
    started = time.monotonic()
    try:
        with console.status("building the lab") as status:

            def progress(step: str) -> None:
                status.update(step)
                console.print(f"[dim]{time.monotonic() - started:6.2f}s[/dim] {step}", highlight=False)

            lab = Lab.up(topology, name, policies=policies, progress=progress)
    except LabError as exc:
        raise _fail(exc) from None
    console.print(f"[green]lab {lab.name} is up[/green] in {time.monotonic() - started:.2f}s")
    _print_status(lab)


@lab_app.command(
    "exec",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def exec_cmd(
    pod: Annotated[str, typer.Argument(help="Pod name or namespace/name.")],
    command: Annotated[list[str], typer.Argument(help="The command (after --).")],
    name: NameOpt = DEFAULT_LAB,
) -> None:
    """Run a command inside a pod (its network namespace and resolv.conf); the exit status passes through."""
    _root()
    try:
        argv = Lab.load(name).exec_argv(pod, command)
    except LabError as exc:
        raise _fail(exc) from None
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        err.print(f"[red]error:[/red] {argv[0]}: {exc.strerror}")
        raise typer.Exit(127) from None


def _print_status(lab: Lab) -> None:
    from l7.lab.agents import node_processes

    plan = lab.plan
    procs_by_ns: dict[str, list[str]] = {}
    for proc in lab.processes():
        if proc.name.startswith("agent:"):
            continue  # on its node's row, with the node's Envoy and DNS socket keeper
        mark = UP if proc.alive else DOWN
        procs_by_ns.setdefault(proc.netns, []).append(f"{proc.name.split(':', 1)[-1]} {proc.pid} {mark}")
    table = Table(title=f"lab {lab.name} (index {plan.index}, {lab.state.phase})")
    for col in ("kind", "name", "node", "netns", "addresses", "processes"):
        table.add_column(col)
    table.add_row("fabric", "", "", plan.fabric_netns, f"{plan.fabric_v4} {plan.fabric_v6}", "")
    for n in plan.nodes:
        own = [
            f"{p.what} {p.pid if p.pid is not None else '-'} {UP if p.alive else DOWN}"
            for p in node_processes(lab.state, n.name)
        ]
        table.add_row("node", n.name, "", n.netns, "\n".join(n.ips), "\n".join(own))
    for p in plan.pods:
        table.add_row(
            "pod", p.key, p.node, p.netns, "\n".join(p.ips), "\n".join(procs_by_ns.get(p.netns, []))
        )
    for w in plan.worlds:
        table.add_row("world", w.name, "", w.netns, "\n".join(w.ips), "\n".join(procs_by_ns.get(w.netns, [])))
    console.print(table)


@lab_app.command("status")
def status_cmd(
    name: NameOpt = DEFAULT_LAB,
    output: OutputOpt = Output.table,
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="Same as -o json.")] = False,
) -> None:
    """Nodes, pods, addresses and whether the lab's processes are alive (-o json|yaml: the lab's
    endpoints)."""
    try:
        lab = Lab.load(name)
    except LabError as exc:
        others = [n for n in list_labs() if n != name]
        if others:
            err.print(f"labs: {', '.join(others)}")
        raise _fail(exc) from None
    if as_json or output is not Output.table:
        emit(lab.endpoints(), Output.json if as_json else output)
        return
    _print_status(lab)


@lab_app.command("down")
def down_cmd(name: NameOpt = DEFAULT_LAB) -> None:
    """Remove every namespace, process, /etc/netns entry and file the lab created (idempotent)."""
    _root()
    try:
        removed = down(name)
    except LabError as exc:
        raise _fail(exc) from None
    if not removed:
        console.print(f"no lab {name!r}: nothing to do")
        return
    for item in removed:
        console.print(f"removed {item}" if not item.startswith("warning:") else f"[yellow]{item}[/yellow]")
    console.print(f"[green]lab {name} is down[/green]")


@lab_app.command("apply")
def apply_cmd(
    policies: Annotated[Path, typer.Argument(help="Policy directory or file: the lab's new policy set.")],
    name: NameOpt = DEFAULT_LAB,
) -> None:
    """Replace the lab's policy set and wait until every node agent enforces it.

    The set is validated first: on errors every one is printed with its field path, nothing changes and
    the exit status is 1."""
    from l7.lab.lab import apply_policies
    from l7.policy.documents import PolicySourceError, load_paths

    _exists(policies, "policies")
    _root()
    try:
        result = load_paths([policies])
    except PolicySourceError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if result.errors:
        for error in result.errors:
            err.print(str(error), markup=False, highlight=False)
        err.print(f"[red]{len(result.errors)} error(s): the lab's policy set is unchanged[/red]")
        raise typer.Exit(1)
    try:
        digest, seconds = apply_policies(name, policies)
    except LabError as exc:
        raise _fail(exc) from None
    console.print(
        f"[green]lab {name}: {len(result.policies)} policies ({digest}) applied on every node[/green]"
        f" in {seconds:.2f}s"
    )


@lab_app.command("restart-agent")
def restart_agent_cmd(
    node: Annotated[str, typer.Argument(help="The node whose agent to restart.")],
    name: NameOpt = DEFAULT_LAB,
    kill: Annotated[
        bool, typer.Option("--kill", help="SIGKILL the agent (a crash) instead of SIGTERM (a rollout).")
    ] = False,
) -> None:
    """Restart a node's agent as a DaemonSet rollout does: stop it (SIGTERM and wait; --kill: SIGKILL),
    start a new one and wait until it enforces the lab's current policies. Enforcement and DNS go on
    meanwhile (pinned datapath, Envoy, the DNS socket keeper)."""
    from l7.lab.agents import rollout_agent

    _root()
    try:
        done = rollout_agent(name, node, kill=kill)
    except LabError as exc:
        raise _fail(exc) from None
    console.print(
        f"[green]lab {name}: agent of {node} restarted[/green] ({done.signal} to pid {done.old_pid}, "
        f"stopped in {done.stop_seconds:.2f}s; new pid {done.new.pid} ready in {done.ready_seconds:.2f}s)",
        highlight=False,
        soft_wrap=True,
    )
