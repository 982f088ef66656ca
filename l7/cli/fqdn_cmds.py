"""``l7gate fqdn cache``: what the node agents' DNS proxies learned (name, IPs, TTL, expiry, selectors).

Reads each agent's ``fqdn-cache-<node>.json`` with its journals (``l7.fqdn_state.read_state``; the DNS
service journals the changed names about once a second).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from l7.cli import app
from l7.cli.common import LabOpt, Output, OutputOpt, StateDirOpt, emit, node_source
from l7.fqdn_state import read_state

fqdn_app = typer.Typer(no_args_is_help=True, help="toFQDNs: the names and IPs learned from DNS.")
app.add_typer(fqdn_app, name="fqdn")
console = Console()


def _state_dir(lab: str | None, state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    from l7.lab import DEFAULT_LAB, Lab
    from l7.lab import agents as agent_lab

    return agent_lab.agent_dir(Lab.load(lab or DEFAULT_LAB).state)


def cache_rows(directory: Path, node: str | None = None) -> list[dict[str, Any]]:
    """One row per (node, name, IP) from the state files under ``directory``."""
    rows: list[dict[str, Any]] = []
    now = time.time()
    for path in sorted(directory.glob("fqdn-cache-*.json")):
        this = path.stem.removeprefix("fqdn-cache-")
        if node is not None and this != node:
            continue
        data = read_state(path)
        if data is None:
            continue  # being rewritten, or not ours: the next read sees it
        selectors = data.get("selectors", {})
        for name, entries in sorted(data.get("names", {}).items()):
            for ip, ttl, learned, expires in entries:
                rows.append(
                    {
                        "node": this,
                        "name": name,
                        "ip": ip,
                        "ttl": ttl,
                        "learned": learned,
                        "expires": expires,
                        "expires_in": round(expires - now, 1),
                        "selectors": selectors.get(name, []),
                    }
                )
    return rows


@fqdn_app.command("cache")
def cache_cmd(
    lab: LabOpt = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    state_dir: StateDirOpt = None,
    output: OutputOpt = Output.table,
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="Same as -o json.")] = False,
) -> None:
    """Print the FQDN cache: name, IPs, TTL, time to expiry and the toFQDNs selectors it feeds."""
    rows = cache_rows(node_source(lab, state_dir).agent_dir, node)
    if as_json or output is not Output.table:
        emit(rows, Output.json if as_json else output)
        return
    table = Table("node", "name", "ip", "ttl", "expires in", "selectors")
    for r in rows:
        left = r["expires_in"]
        expires = f"{left:.0f}s" if left >= 0 else f"expired {-left:.0f}s ago"
        table.add_row(r["node"], r["name"], r["ip"], str(r["ttl"]), expires, ", ".join(r["selectors"]))
    console.print(table)
