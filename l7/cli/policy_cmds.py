"""``l7gate policy validate PATH...``: check policy files offline, report every error with its field path.

Exit status: 0 when every document is valid, 1 when any is not or when no policy document is found at all
(an empty directory is almost always a mistake), 2 when a path does not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from l7.cli import policy_app
from l7.policy.documents import Policy, PolicySourceError, load_paths


def _summary(policy: Policy) -> str:
    where = f"{policy.namespace}/{policy.name}" if policy.namespace is not None else policy.name
    count = len(policy.rules)
    return f"ok  {policy.kind} {where}  ({policy.source}#{policy.index})  {count} rule{'s' * (count != 1)}"


@policy_app.command("validate")
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Policy files or directories (*.yaml, *.yml).")],
) -> None:
    """Validate policy documents; print one line per valid policy or every error with its field path."""
    try:
        result = load_paths(paths)
    except PolicySourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if result.errors:
        for error in result.errors:
            typer.echo(str(error))
        documents = len({(e.source, e.index) for e in result.errors})
        typer.echo(f"{len(result.errors)} error(s) in {documents} document(s)", err=True)
        raise typer.Exit(1)
    if not result.policies:
        typer.echo(f"no policy documents found in {', '.join(str(p) for p in paths)}", err=True)
        raise typer.Exit(1)
    for policy in result.policies:
        typer.echo(_summary(policy))
