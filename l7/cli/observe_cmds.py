"""``l7gate observe``: the flows of a lab's (or a files-mode agent's) nodes, one line each, like
``hubble observe`` — L3/L4 verdicts and drops from the datapath, HTTP requests from Envoy's access log,
DNS queries from the DNS proxy (see l7.flows) — each with its direction and what decided it, from the
applied policy set (l7.flow_decisions)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from l7.cli import app
from l7.cli.common import LabOpt, Output, OutputOpt, StateDirOpt, node_source, usage_error
from l7.flow_decisions import Decider
from l7.flows import Filter, Flow, FlowReader, Names

FOLLOW_INTERVAL = 0.3


class VerdictOpt(StrEnum):
    allowed = "allowed"
    denied = "denied"
    audit = "audit"
    redirected = "redirected"
    forwarded = "forwarded"  # hubble's word for allowed
    dropped = "dropped"  # hubble's word for denied


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


def decided(flow: Flow) -> str:
    """``by POLICY PATH`` (the deciding rules), ``default deny by POLICY, ...`` or ``no policy``."""
    if flow.decision == "default-deny":
        return "default deny (selected by " + ", ".join(flow.decided_by) + ")" if flow.decided_by else ""
    if flow.decision in ("no-policy", "default-allow"):
        return flow.decision.replace("-", " ")
    return "by " + ", ".join(flow.decided_by) if flow.decided_by else ""


def format_line(flow: Flow) -> str:
    """One flow as a hubble-like line (plain text)."""
    ts = dt.datetime.fromtimestamp(flow.time).strftime("%b %d %H:%M:%S.%f")[:-3]
    src = _peer(flow.src, flow.src_ip, flow.src_port, flow.src_identity)
    dst = _peer(flow.dst, flow.dst_ip, flow.dst_port, flow.dst_identity)
    direction = f" {flow.direction.upper()}" if flow.direction else ""
    if flow.redirected:
        verdict = f"REDIRECTED ({flow.reason})"
    else:
        reason = f" ({flow.reason})" if flow.reason and flow.verdict != "allowed" else ""
        verdict = flow.verdict.upper() + reason
    why = decided(flow)
    why = f" [{why}]" if why else ""
    return f"{ts} [{flow.node}] {src} -> {dst} {flow.type}{direction} {verdict} {summary(flow)}{why}"


_COLOR = {"allowed": "green", "denied": "red", "audit": "yellow"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, option: str, now: float | None = None) -> float:
    """A point in time: a duration before now (``30s``, ``5m``, ``2h``), an RFC 3339 / ISO time
    (``2024-05-01T10:00:00``, local time without a zone) or unix seconds."""
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        usage_error(f"{option} {text!r}: give a duration (30s, 5m, 2h), an ISO time or unix seconds")


@app.command("observe")
def observe_cmd(  # noqa: PLR0917  (typer options)
    lab: LabOpt = None,
    state_dir: StateDirOpt = None,
    endpoints: Annotated[
        Path | None, typer.Option("--endpoints", help="With --state-dir: the endpoints file (names, labels).")
    ] = None,
    policies: Annotated[
        Path | None, typer.Option("--policies", help="With --state-dir: the policy set (what decided).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Print new flows from now on.")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="Flows since a time: 5m, 2h, an ISO time (replays).")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Flows until a time (same forms).")] = None,
    last: Annotated[int, typer.Option("--last", help="Only the last N flows (0: all).", min=0)] = 0,
    pod: Annotated[str | None, typer.Option("--pod", help="From or to POD or NS/POD.")] = None,
    from_pod: Annotated[str | None, typer.Option("--from-pod", help="From [NS/]POD (a name prefix).")] = None,
    to_pod: Annotated[str | None, typer.Option("--to-pod", help="To [NS/]POD (a name prefix).")] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="From or to a pod in this namespace.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="From or to an endpoint with KEY=VALUE or KEY.")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Source or destination port.")] = None,
    http_status: Annotated[str | None, typer.Option("--http-status", help="403, or 4+ for 4xx.")] = None,
    http_path: Annotated[str | None, typer.Option("--http-path", help="HTTP path regex.")] = None,
    fqdn: Annotated[
        str | None, typer.Option("--fqdn", help="DNS name (or pattern, *.example.com) queried, from or to.")
    ] = None,
    verdict: Annotated[
        VerdictOpt | None,
        typer.Option("--verdict", help="allowed (forwarded), denied (dropped), audit or redirected."),
    ] = None,
    type_: Annotated[TypeOpt | None, typer.Option("--type", "-t", help="l3l4, http or dns")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Print flow events: time, node, source, destination, type, direction, verdict and reason, HTTP
    method/path/status or DNS name/type/rcode/answers, and the rule that decided (the allowing or deny
    rule, or the policies that put the endpoint in default deny). -o json prints one object a line.

    Without --follow: every logged flow (or those since --since). With --follow: new flows from now on
    (with --since: from then on)."""
    if http_path is not None:
        try:
            re.compile(http_path)
        except re.error as exc:
            usage_error(f"--http-path {http_path!r}: {exc}")
    now = time.time()
    wanted = Filter(
        pod=pod,
        from_pod=from_pod,
        to_pod=to_pod,
        namespace=namespace,
        labels=tuple(label or ()),
        since=parse_time(since, "--since", now) if since else None,
        until=parse_time(until, "--until", now) if until else None,
        port=port,
        http_status=http_status,
        http_path=http_path,
        fqdn=fqdn,
        verdict=verdict.value if verdict else None,
        type=type_.value if type_ else None,
    )
    source = node_source(lab, state_dir, policies, endpoints)
    names = Names.load(source.endpoints) if source.endpoints is not None else Names()
    reader = FlowReader(source.agent_dir, names)
    decider = Decider(source.agent_dir, source.policies, source.endpoints)
    console = Console(highlight=False)

    def emit(flows: list[Flow]) -> None:
        for raw in flows:
            flow = decider.annotate(raw)
            if output is Output.json:
                print(json.dumps(flow.as_dict()), flush=True)
            elif output is Output.yaml:
                print("---\n" + yaml.safe_dump(flow.as_dict(), sort_keys=False).rstrip("\n"), flush=True)
            else:
                color = _COLOR.get(flow.verdict, "white")
                console.print(f"[{color}]{escape(format_line(flow))}[/{color}]", soft_wrap=True)

    def matching() -> list[Flow]:
        return [f for f in reader.poll() if wanted.matches(f, names)]

    first = matching()
    if follow and since is None and not last:
        first = []  # --follow starts at now; --since (or --last) replays
    emit(first[-last:] if last else first)
    if decider.problem and output is Output.table:
        Console(stderr=True).print(
            f"note: not showing what decided: {escape(decider.problem)}", highlight=False
        )
    if not follow:
        return
    try:
        inputs = _signature(source.policies, source.endpoints)
        while True:
            time.sleep(FOLLOW_INTERVAL)
            current = _signature(source.policies, source.endpoints)
            if current != inputs:
                inputs = current
                decider.reload()
            emit(matching())
    except KeyboardInterrupt:
        return


def _signature(*paths: Path | None) -> tuple[object, ...]:
    from l7.agent.watch import signature

    return signature([p for p in paths if p is not None])
