"""The ``l7gate`` command line.

Each command group lives in its own module and registers itself on :data:`app`; the conventions every
command follows (``-o table|json|yaml``, exit codes, ``--lab``/``--state-dir``) are in
:mod:`l7.cli.common`.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from typing import Annotated

import typer
from typer.core import TyperOption

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="l7gate: L7 network policy engine",
)
policy_app = typer.Typer(
    no_args_is_help=True, help="Validate and trace policies; the applied set and its selectors."
)
app.add_typer(policy_app, name="policy")


def _display_type_rich(self: TyperOption, ctx: object) -> str | None:
    """No value hint for flags (``--follow``, not ``--follow <bool>``): a flag takes no value."""
    if self.is_flag and not self.count:
        return None
    return _typer_display_type_rich(self, ctx)  # type: ignore[arg-type]


# typer 0.29 prints the type of every option in the rich help panel, ``<bool>`` for flags too; click's
# own help does not. One override keeps every command's help free of it.
_typer_display_type_rich = TyperOption.display_type_rich
TyperOption.display_type_rich = _display_type_rich  # type: ignore[method-assign]


def version() -> str:
    try:
        return metadata.version("l7gate")
    except metadata.PackageNotFoundError:
        return "unknown"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"l7gate {version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version_callback, is_eager=True
        ),
    ] = False,
) -> None:
    """l7gate: L7 network policy engine (CiliumNetworkPolicy-shaped rules on Linux nodes)."""


# Which modules register each top-level command (``policy``: its subcommands live in three). A
# command line names one of them: only its modules are imported (``l7gate agent`` starts without
# the lab, demo and view modules: ~0.3 s); anything else (help, --version, a typo) imports them all.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "agent": ("agent_cmds",),
    "agent-probe": ("agent_cmds",),
    "socket-keeper": ("agent_cmds",),
    "bpf": ("bpf_cmds",),
    "demo": ("demo_cmds",),
    "fqdn": ("fqdn_cmds",),
    "lab": ("lab_cmds",),
    "observe": ("observe_cmds",),
    "status": ("status_cmds",),
    "endpoint": ("views_cmds",),
    "identity": ("views_cmds",),
    "xds": ("xds_cmds",),
    "policy": ("policy_cmds", "trace_cmd", "views_cmds"),
}
ALL_MODULES = tuple(sorted({m for modules in COMMAND_MODULES.values() for m in modules}))


def register(argv: list[str] | None = None) -> None:
    """Import the command modules (each registers its commands on :data:`app`): those of the command
    ``argv`` names (its first word that is not an option), or every one."""
    command = next((arg for arg in argv or () if not arg.startswith("-")), None)
    for name in COMMAND_MODULES.get(command or "", ALL_MODULES):
        importlib.import_module(f"l7.cli.{name}")


def main() -> None:
    """Entry point of the console script."""
    register(sys.argv[1:])
    app()
