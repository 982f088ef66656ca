"""The ``l7gate`` command line.

Each command group lives in its own module and registers itself on :data:`app`.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="l7gate: L7 network policy engine")
policy_app = typer.Typer(no_args_is_help=True, help="Validate and trace policies offline.")
app.add_typer(policy_app, name="policy")


def main() -> None:
    """Entry point of the console script."""
    from l7.cli import (  # noqa: F401  (register commands)
        agent_cmds,
        demo_cmds,
        fqdn_cmds,
        lab_cmds,
        observe_cmds,
        policy_cmds,
        status_cmds,
        trace_cmd,
        xds_cmds,
    )

    app()
