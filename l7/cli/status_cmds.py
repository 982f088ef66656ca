"""``l7gate status``: each node agent's state from its status file (``agent-<node>.json``: pid, ready,
generation, input errors, and the services' own status — Envoy, DNS proxy, flow log, metrics), plus the
policy set the agents watch (accepted documents, rejected ones with their field paths)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from l7.cli import app
from l7.cli.common import EXIT_FAILURE, LabOpt, Output, OutputOpt, StateDirOpt, emit, node_source


def _alive(pid: object) -> bool:
    from l7.agent.watch import pid_alive

    return pid_alive(pid)


def read_statuses(agent_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(agent_dir.glob("agent-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            data["alive"] = _alive(data.get("pid"))
            out.append(data)
    return out


def policy_report(policies: Path) -> dict[str, Any]:
    """Accepted documents and every error (with its field path) of the policy set at ``policies``."""
    from l7.policy.documents import PolicySourceError, load_paths

    if not policies.exists():
        return {"path": str(policies), "accepted": [], "rejected": []}
    try:
        result = load_paths([policies])
    except PolicySourceError as exc:
        return {"path": str(policies), "accepted": [], "rejected": [str(exc)]}
    accepted = [f"{p.kind} {p.namespace + '/' if p.namespace else ''}{p.name}" for p in result.policies]
    return {
        "path": str(policies.resolve()),
        "accepted": accepted,
        "rejected": [str(e) for e in result.errors],
    }


def _agent_cell(st: dict[str, Any]) -> str:
    state = st.get("state", "?")
    if not st.get("alive"):
        state = f"[red]not running[/red] (last: {state})"
    ready = "[green]ready[/green]" if st.get("ready") else "[yellow]not ready[/yellow]"
    lines = [f"pid {st.get('pid')} {state}", f"{ready} gen {st.get('generation', 0)}"]
    errors = st.get("errors") or []
    if errors:
        lines.append(f"[red]{len(errors)} input error(s)[/red]")
    missing = st.get("missing") or []
    if missing:
        lines.append(f"[yellow]no interface: {', '.join(missing)}[/yellow]")
    age = time.time() - float(st.get("updated") or 0)
    lines.append(f"updated {age:.0f}s ago")
    return "\n".join(lines)


def _envoy_cell(st: dict[str, Any] | None) -> str:
    if not st:
        return "-"
    run = "[green]running[/green]" if st.get("running") else "[red]not running[/red]"
    lines = [f"{run} pid {st.get('pid')}"]
    acked = st.get("acked") or {}
    if acked:
        versions = sorted({str(v)[:12] for v in acked.values()})
        lines.append(f"ACKed {', '.join(versions)}")
    lines.append(f"pushes {st.get('pushes', 0)} nacks {st.get('nacks', 0)}")
    nack = st.get("last_nack")
    if nack:
        lines.append(f"[red]last NACK {nack.get('type')}: {escape(str(nack.get('error', '')))[:200]}[/red]")
    for e in st.get("errors") or []:
        lines.append(f"[red]{escape(str(e))[:200]}[/red]")
    return "\n".join(lines)


def _dns_cell(st: dict[str, Any] | None) -> str:
    if not st:
        return "-"
    ports = st.get("ports") or []
    lines = [f"ports {', '.join(map(str, ports)) or 'none'}", f"cached IPs {st.get('cached_ips', 0)}"]
    p99 = st.get("lookup_to_allowed_p99_ms")
    if p99 is not None:
        lines.append(f"p99 {p99} ms")
    return "\n".join(lines)


def _datapath_cell(st: dict[str, Any]) -> str:
    services = st.get("services") or {}
    dp = (services.get("metrics") or {}).get("datapath") or {}
    lines = [str(st.get("datapath", "-"))]
    progs = dp.get("programs_attached") or {}
    if progs:
        lines.append("attached: " + ", ".join(f"{n} {k}" for k, n in progs.items()))
    for name, m in (dp.get("maps") or {}).items():
        lines.append(f"{name} {m.get('entries')}/{m.get('capacity')}")
    flows = services.get("flows") or {}
    if flows:
        drops = sum((flows.get("drops") or {}).values())
        lines.append(f"events {flows.get('events', 0)} (drops {drops})")
    metrics = services.get("metrics") or {}
    if metrics.get("listen"):
        lines.append(f"metrics {metrics['listen']}" + ("" if metrics.get("serving") else " [red]down[/red]"))
    return "\n".join(lines)


def render(statuses: list[dict[str, Any]], policies: dict[str, Any] | None, console: Console) -> None:
    table = Table(title="node agents", show_lines=True)
    for col in ("node", "agent", "envoy", "dns proxy", "datapath"):
        table.add_column(col, overflow="fold")
    for st in statuses:
        services = st.get("services") or {}
        table.add_row(
            str(st.get("node")),
            _agent_cell(st),
            _envoy_cell(services.get("envoy")),
            _dns_cell(services.get("dns")),
            _datapath_cell(st),
        )
    console.print(table)
    for st in statuses:
        for e in st.get("errors") or []:
            console.print(f"[red]{st.get('node')}: {escape(str(e))}[/red]", soft_wrap=True)
        for p in st.get("policy_errors") or []:  # rules the node refuses (e.g. a TLS secret missing)
            where = f"{p.get('policy')} {p.get('path')}: {p.get('message')}"
            console.print(f"[red]{st.get('node')}: refused {escape(where)}[/red]", soft_wrap=True)
    if policies is not None:
        ok, bad = policies["accepted"], policies["rejected"]
        console.print(
            f"policies ({policies['path']}): {len(ok)} accepted, {len(bad)} rejected", soft_wrap=True
        )
        for name in ok:
            console.print(f"  [green]accepted[/green] {escape(name)}", soft_wrap=True)
        for e in bad:
            console.print(f"  [red]rejected[/red] {escape(e)}", soft_wrap=True)


@app.command("status")
def status_cmd(lab: LabOpt = None, state_dir: StateDirOpt = None, output: OutputOpt = Output.table) -> None:
    """Node agents (pid, ready, generation, errors), Envoy (ACKed version, last NACK), DNS proxy,
    datapath (programs attached, map usage) and the policy set (accepted, rejected with field paths).

    Exit status 1 when an agent is down or not ready, 2 when the lab or state directory does not exist."""
    console = Console(highlight=False)
    source = node_source(lab, state_dir)
    state_dir = source.agent_dir
    policies = policy_report(source.policies) if source.policies is not None else None
    statuses = read_statuses(state_dir)
    if output is not Output.table:
        emit({"agents": statuses, "policies": policies}, output)
    else:
        if not statuses:
            console.print(f"no agent status files in {state_dir}")
        render(statuses, policies, console)
    if not statuses or not all(st.get("alive") and st.get("ready") for st in statuses):
        raise typer.Exit(EXIT_FAILURE)
