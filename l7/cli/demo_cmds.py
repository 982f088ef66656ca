"""``l7gate demo``: play the seed documents' scenarios in a lab and print what happened (see l7.demo)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from l7.cli import app
from l7.cli.common import EXIT_FAILURE, EXIT_USAGE, Output, OutputOpt, emit
from l7.demo import (
    DEFAULT_SCENARIOS,
    DemoError,
    DemoReport,
    ScenarioError,
    StepResult,
    load_scenarios,
    run_demo,
)
from l7.lab import LabError

DEMO_LAB = "l7gate-demo"


def _table(report: DemoReport) -> Table:
    table = Table(title=f"l7gate demo (lab {report.lab})", show_lines=False, expand=True)
    table.add_column("scenario", overflow="fold", ratio=3)
    table.add_column("where", overflow="fold", ratio=2)
    table.add_column("command", overflow="fold", ratio=5)
    table.add_column("expected", overflow="fold", ratio=3)
    table.add_column("observed", overflow="fold", ratio=3)
    table.add_column("", no_wrap=True, width=4)
    last = None
    for r in report.results:
        phase = f"{r.phase}\n[yellow](not from the seed posts)[/yellow]" if r.extra else r.phase
        table.add_row(
            phase if r.phase != last else "",
            r.where,
            r.command,
            r.expected,
            r.observed if r.passed else f"{r.observed}\n[red]{r.reason}[/red]",
            "[green]pass[/green]" if r.passed else "[red]FAIL[/red]",
            end_section=False,
        )
        last = r.phase
    return table


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@app.command("demo")
def demo_cmd(
    scenarios: Annotated[
        Path, typer.Option("--scenarios", help="Scenario file (default: the seed documents' scenarios).")
    ] = DEFAULT_SCENARIOS,
    name: Annotated[str, typer.Option("--lab", "--name", help="Name of the lab the demo builds.")] = DEMO_LAB,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the lab up afterwards.")] = False,
    only: Annotated[
        str | None, typer.Option("--only", help="Only scenarios whose name, pod or command contains this.")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Build a lab, apply each seed policy set, run the seed documents' commands inside the pods and
    compare what they show with what they should; then the phases beyond the seeds (SNI, TLS
    interception, host policies), marked as not from the seed posts. Exit status 1 if any scenario fails."""
    console = Console()
    if not console.is_terminal:  # a pipe or a file: wide enough for one line per row
        console = Console(width=max(console.width, 160))
    err = Console(stderr=True)
    if not scenarios.is_file():
        err.print(f"[red]error:[/red] --scenarios {scenarios}: no such file", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    if os.geteuid() != 0:
        err.print("[red]error:[/red] the demo needs root (network namespaces, eBPF)")
        raise typer.Exit(EXIT_USAGE)
    try:
        loaded = load_scenarios(scenarios)
    except ScenarioError as exc:
        err.print(f"[red]{exc.source}: invalid scenario file[/red]")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(EXIT_FAILURE) from None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    live = output is Output.table
    try:
        with err.status("building the lab") as status:

            def progress(step: str) -> None:
                status.update(step)
                err.log(step, highlight=False)

            def on_result(r: StepResult) -> None:
                if live:
                    mark = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
                    err.print(f"  {mark} {r.where}: {r.command} → {r.observed}", highlight=False)

            report = run_demo(loaded, name, only=only, keep=keep, progress=progress, on_result=on_result)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: the lab was taken down[/yellow]" if not keep else "interrupted")
        raise typer.Exit(130) from None
    except (DemoError, LabError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if output is not Output.table:
        emit(report.as_dict(), output)
    else:
        console.print(_table(report))
        for phase, note in report.notes.items():
            console.print(f"[bold]{phase}[/bold]: {note}", highlight=False)
        failed = sum(1 for r in report.results if not r.passed)
        summary = f"{report.summary()} in {report.seconds:.1f}s (lab up {report.up_seconds:.1f}s)"
        console.print(("[green]" if not failed else "[red]") + summary)
        if keep:
            console.print(f"lab {name} is still up: `l7gate lab down --lab {name}` removes it")
    if not report.passed:
        raise typer.Exit(EXIT_FAILURE)
