"""``l7gate observe``: the flows of a lab's (or a files-mode agent's) nodes, one line each, like
``hubble observe`` — L3/L4 verdicts and drops from the datapath, HTTP requests from Envoy's access log,
DNS queries from the DNS proxy (see l7.flows)."""

from __future__ import annotations

import datetime as dt
import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from l7.cli import app
from l7.flows import Flow, FlowReader, Names, select
from l7.lab.state import DEFAULT_LAB, check_name, load_state

FOLLOW_INTERVAL = 0.3


class Output(StrEnum):
    table = "table"
    json = "json"


class VerdictOpt(StrEnum):
    allowed = "allowed"
    denied = "denied"
    audit = "audit"


class TypeOpt(StrEnum):
    l3l4 = "l3l4"
    http = "http"
    dns = "dns"


def _peer(name: str, ip: str, port: int, identity: int | None) -> str:
    who = name or ip or "?"
    if ":" in who and not name:
        who = f"[{who}]"
    who = f"{who}:{port}" if port else who
    return f"{who} (identity {identity})" if identity and not name else who


def summary(flow: Flow) -> str:
    if flow.type == "http":
        status = flow.http_status if flow.http_status is not None else "-"
        return f"{flow.http_method} http://{flow.http_host}{flow.http_path} → {status}"
    if flow.type == "dns":
        ips = ",".join(flow.dns_ips)
        return f"{flow.dns_qname} {flow.dns_qtype} → {flow.dns_rcode}" + (f" {ips}" if ips else "")
    return flow.proto


def format_line(flow: Flow) -> str:
    """One flow as a hubble-like line (plain text)."""
    ts = dt.datetime.fromtimestamp(flow.time).strftime("%b %d %H:%M:%S.%f")[:-3]
    src = _peer(flow.src, flow.src_ip, flow.src_port, flow.src_identity)
    dst = _peer(flow.dst, flow.dst_ip, flow.dst_port, flow.dst_identity)
    verdict = flow.verdict.upper()
    reason = f" ({flow.reason})" if flow.reason and flow.verdict != "allowed" else ""
    return f"{ts} [{flow.node}] {src} -> {dst} {flow.type} {verdict}{reason} {summary(flow)}"


_COLOR = {"allowed": "green", "denied": "red", "audit": "yellow"}


def _source(lab: str | None, state_dir: Path | None, endpoints: Path | None) -> tuple[Path, Names]:
    if state_dir is not None:
        return state_dir, Names.load(endpoints) if endpoints else Names()
    name = check_name(lab or DEFAULT_LAB)
    state = load_state(name)
    if state is None:
        raise typer.BadParameter(f"no lab named {name!r} (see `l7gate lab up`)", param_hint="--lab")
    return state.directory / "agent", Names.load(state.directory / "endpoints.json")


@app.command("observe")
def observe_cmd(  # noqa: PLR0917  (typer options)
    lab: Annotated[str | None, typer.Option("--lab", "-n", help="The lab (default: l7gate).")] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="A files-mode agent's state directory instead.")
    ] = None,
    endpoints: Annotated[
        Path | None, typer.Option("--endpoints", help="Endpoints file for names (with --state-dir).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new flows.")] = False,
    pod: Annotated[str | None, typer.Option("--pod", help="Only flows from or to POD or NS/POD.")] = None,
    verdict: Annotated[VerdictOpt | None, typer.Option("--verdict", help="allowed, denied or audit")] = None,
    type_: Annotated[TypeOpt | None, typer.Option("--type", "-t", help="l3l4, http or dns")] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json (one object a line)")] = (
        Output.table
    ),
    last: Annotated[int, typer.Option("--last", help="Only the last N flows (0: all).", min=0)] = 0,
) -> None:
    """Print flow events with their verdicts: time, source, destination, type, verdict and reason,
    HTTP method/path/status, DNS name/type/rcode/answers."""
    console = Console(highlight=False)
    directory, names = _source(lab, state_dir, endpoints)
    reader = FlowReader(directory, names)

    def emit(flows: list[Flow]) -> None:
        for flow in flows:
            if output is Output.json:
                print(json.dumps(flow.as_dict()), flush=True)
            else:
                color = _COLOR.get(flow.verdict, "white")
                console.print(f"[{color}]{escape(format_line(flow))}[/{color}]", soft_wrap=True)

    def matching() -> list[Flow]:
        return list(
            select(
                reader.poll(),
                pod=pod,
                verdict=verdict.value if verdict else None,
                type=type_.value if type_ else None,
            )
        )

    first = matching()
    emit(first[-last:] if last else first)
    if not follow:
        return
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            emit(matching())
    except KeyboardInterrupt:
        return
