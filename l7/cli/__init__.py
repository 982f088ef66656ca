"""The ``l7gate`` command line.

Each command group lives in its own module and registers itself on :data:`app`; the conventions every
command follows (``-o table|json|yaml``, exit codes, ``--lab``/``--state-dir``) are in
:mod:`l7.cli.common`.
"""

from __future__ import annotations

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


def register() -> None:
    """Import every command module (each registers its commands on :data:`app`)."""
    from l7.cli import (  # noqa: F401  (register commands)
        agent_cmds,
        bpf_cmds,
        demo_cmds,
        fqdn_cmds,
        lab_cmds,
        observe_cmds,
        policy_cmds,
        status_cmds,
        trace_cmd,
        views_cmds,
        xds_cmds,
    )


def main() -> None:
    """Entry point of the console script."""
    register()
    app()
