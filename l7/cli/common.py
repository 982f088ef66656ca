"""What every ``l7gate`` command shares: one output flag, one exit-code convention, one way to find a
node's state.

Conventions (docs/user-guide.md, "Command-line conventions"):

* ``-o/--output table|json|yaml`` on every command that prints data (:data:`OutputOpt`, :func:`emit`);
* exit status 0 ok, 1 a verdict or a validation failure, 2 bad usage or missing input
  (:data:`EXIT_FAILURE`, :data:`EXIT_USAGE`, :func:`usage_error`); never a traceback for a user error;
* ``--lab NAME`` is a lab, ``-n/--namespace`` a Kubernetes namespace;
* a node's state comes from a lab (``--lab``) or an agent's state directory (``--state-dir``, files and
  Kubernetes mode): :func:`node_source` → :class:`NodeSource`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml

EXIT_OK = 0
EXIT_FAILURE = 1  # a verdict (denied, agent down) or a validation failure
EXIT_USAGE = 2  # bad usage or missing input (no such lab, file or directory)


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table, json or yaml.", case_sensitive=False)
]
LabOpt = Annotated[str | None, typer.Option("--lab", help="The lab (default: l7gate).")]
StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", help="An agent's state directory (files or Kubernetes mode) instead of a lab."
    ),
]


def usage_error(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2 (bad usage or missing input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def dumps(data: Any, output: Output) -> str:
    """``data`` as JSON (indented) or YAML (block style, keys in the given order)."""
    if output is Output.yaml:
        return yaml.safe_dump(_plain(data), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return json.dumps(data, indent=2, default=str)


def _plain(data: Any) -> Any:
    """JSON-compatible values only (tuples → lists, unknown objects → str) for ``yaml.safe_dump``."""
    return json.loads(json.dumps(data, default=str))


def emit(data: Any, output: Output) -> None:
    """Print ``data`` as JSON or YAML (the table form is the command's own)."""
    typer.echo(dumps(data, output).rstrip("\n"))


# ------------------------------------------------------------------------------------- node state
@dataclass(frozen=True)
class NodeSource:
    """Where a node's (or a lab's nodes') state is: the agents' state directory, and the inputs the
    agents enforce (policy set, endpoints file) when known."""

    agent_dir: Path
    policies: Path | None
    endpoints: Path | None
    lab: str | None = None

    def nodes(self) -> list[str]:
        """The nodes with an agent status file, sorted."""
        return sorted(p.stem.removeprefix("agent-") for p in self.agent_dir.glob("agent-*.json"))


def node_source(
    lab: str | None,
    state_dir: Path | None,
    policies: Path | None = None,
    endpoints: Path | None = None,
) -> NodeSource:
    """The lab's (``--lab``, default ``l7gate``) or a state directory's node state; exit 2 when it does
    not exist. With ``--state-dir``: the inputs are ``--policies``/``--endpoints`` when given, else the
    Kubernetes controller's (``<state-dir>/k8s/``), else what the agent's status file names."""
    if state_dir is not None:
        if lab is not None:
            usage_error("give --lab or --state-dir, not both")
        if not state_dir.is_dir():
            usage_error(f"--state-dir {state_dir}: no such directory")
        found_policies, found_endpoints = _state_dir_inputs(state_dir)
        return NodeSource(
            state_dir,
            policies if policies is not None else found_policies,
            endpoints if endpoints is not None else found_endpoints,
        )
    from l7.lab.errors import LabError
    from l7.lab.state import DEFAULT_LAB, check_name, load_state

    name = lab or DEFAULT_LAB
    try:
        state = load_state(check_name(name))
    except LabError as exc:
        usage_error(str(exc))
    if state is None:
        usage_error(f"no lab named {name!r} (see `l7gate lab up`, or give --state-dir)")
    return NodeSource(
        state.directory / "agent",
        policies if policies is not None else state.directory / "policies",
        endpoints if endpoints is not None else state.directory / "endpoints.json",
        name,
    )


def _state_dir_inputs(state_dir: Path) -> tuple[Path | None, Path | None]:
    k8s = state_dir / "k8s"
    if (k8s / "endpoints.json").exists():
        return k8s / "policies", k8s / "endpoints.json"
    for status in sorted(state_dir.glob("agent-*.json")):
        try:
            data = json.loads(status.read_text())
        except (OSError, ValueError):
            continue
        inputs = data.get("inputs") if isinstance(data, dict) else None
        if isinstance(inputs, dict) and inputs.get("policies") and inputs.get("endpoints"):
            return Path(str(inputs["policies"])), Path(str(inputs["endpoints"]))
    return None, None
