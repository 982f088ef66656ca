"""``l7gate policy validate PATH...``: check policy files offline, report every error with its field path.

Every document is reported in document order: ``ok`` for a valid policy, its errors for an invalid one,
a note for a skipped document (a kind that is not a policy). ``-`` reads standard input.

Exit status: 0 when every document is valid, 1 when any is not or when no policy document is found at all
(an empty directory is almost always a mistake), 2 when a path does not exist.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from l7.cli import policy_app
from l7.cli.common import EXIT_FAILURE, Output, OutputOpt, emit, usage_error
from l7.policy.documents import LoadResult, Policy, PolicySourceError, load_paths


def _where(policy: Policy) -> str:
    return f"{policy.namespace}/{policy.name}" if policy.namespace is not None else policy.name


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The rows of :func:`report` as text, one line per policy, error or note."""
    out = []
    for row in rows:
        where = f"{row['source']}[{row['document']}]"
        if row["status"] == "ok":
            count = row["rules"]
            out.append(
                f"ok  {row['policy']}  ({row['source']}#{row['document']})  {count} rule{'s' * (count != 1)}"
            )
        elif row["status"] == "error":
            if row.get("policy"):
                where += f" ({row['policy']})"
            out += [
                f"{where}: {e['path']}: {e['message']}" if e["path"] else f"{where}: {e['message']}"
                for e in row["errors"]
            ]
        else:
            path = f"{row['path']}: " if row.get("path") else ""
            out.append(f"note: {where}: {path}{row['note']}")
    return out


def report(result: LoadResult) -> list[dict[str, Any]]:
    """One row per document (and per ``kind: List`` item) in document order: ``status`` ok, error or
    skipped, with the policy, its errors (field path, message) or the note."""
    order = {source: i for i, source in enumerate(result.sources)}
    rows: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
    for seq, policy in enumerate(result.policies):
        row = {
            "status": "ok",
            "source": policy.source,
            "document": policy.index,
            "policy": f"{policy.kind} {_where(policy)}",
            "rules": len(policy.rules),
        }
        rows.append(((order.get(policy.source, 0), policy.index, seq), row))
    grouped: dict[tuple[str, int, str | None], list[dict[str, str]]] = {}
    for error in result.errors:
        grouped.setdefault((error.source, error.index, error.policy), []).append(
            {"path": error.path, "message": error.message}
        )
    for seq, ((source, index, label), errors) in enumerate(grouped.items()):
        row = {"status": "error", "source": source, "document": index, "policy": label, "errors": errors}
        rows.append(((order.get(source, 0), index, seq), row))
    for seq, note in enumerate(result.notes):
        row = {"status": "skipped", "source": note.source, "document": note.index, "note": note.message}
        if note.path:
            row["path"] = note.path
        rows.append(((order.get(note.source, 0), note.index, seq), row))
    rows.sort(key=lambda r: r[0])
    return [{k: v for k, v in row.items() if v is not None} for _, row in rows]


@policy_app.command("validate")
def validate(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Policy files or directories (*.yaml, *.yml); - reads standard input."),
    ],
    output: OutputOpt = Output.table,
) -> None:
    """Validate policy documents; print one line per valid policy, every error with its field path, and
    a note for each document skipped because it is not a policy."""
    try:
        result = load_paths(paths, stdin=sys.stdin)
    except PolicySourceError as exc:
        usage_error(str(exc))
    rows = report(result)
    if output is not Output.table:
        emit({"valid": not result.errors and bool(result.policies), "documents": rows}, output)
    else:
        for line in table_lines(rows):
            typer.echo(line)
    if result.errors:
        documents = len({(e.source, e.index, e.policy) for e in result.errors})
        typer.echo(f"{len(result.errors)} error(s) in {documents} document(s)", err=True)
        raise typer.Exit(EXIT_FAILURE)
    if not result.policies:
        typer.echo(f"no policy documents found in {', '.join(str(p) for p in paths)}", err=True)
        raise typer.Exit(EXIT_FAILURE)
