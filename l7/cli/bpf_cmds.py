"""``l7gate bpf policy get ENDPOINT``: the datapath's policy entries of one endpoint in human form, like
``cilium-dbg bpf policy get``.

::

    --lab / --state-dir ──► agent-<node>.json (datapath name, DNS proxy ports)
                        ──► node view (endpoint → IPs, identity → labels)
    /sys/fs/bpf/l7gate/<datapath>/… ──► bpf.pinned (read-only) ──► ipcache: IP → endpoint id
                                                              ──► policy entries of that id

Nothing is compiled, loaded or attached: the pinned maps are opened read-only. ``ENDPOINT`` is
``NAME``, ``NAMESPACE/NAME`` or a numeric endpoint id.
"""

from __future__ import annotations

import socket
from typing import Annotated, Any

import typer

from l7.cli import app
from l7.cli.common import EXIT_FAILURE, LabOpt, Output, OutputOpt, StateDirOpt, emit, node_source, usage_error
from l7.cli.views_cmds import EndpointsOpt, NodeOpt, PoliciesOpt, _table, _views
from l7.identity import ReservedIdentity
from l7.node_view import NodeView

bpf_app = typer.Typer(no_args_is_help=True, help="The datapath's maps, read from their pins.")
bpf_policy_app = typer.Typer(no_args_is_help=True, help="The policy map.")
app.add_typer(bpf_app, name="bpf")
bpf_app.add_typer(bpf_policy_app, name="policy")

_PROTOCOLS = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"}


def _find(views: list[tuple[NodeView, dict[str, Any]]], ref: str) -> tuple[NodeView, dict[str, Any], Any]:
    """The (view, status, endpoint) that ``ref`` (NAME or NAMESPACE/NAME) names; exit 2 otherwise."""
    found = [
        (view, status, r.endpoint)
        for view, status in views
        for r in view.resolved.endpoints
        if r.endpoint.key == ref or ("/" not in ref and r.endpoint.name == ref)
    ]
    if len(found) > 1:
        usage_error(
            f"endpoint {ref!r} is ambiguous: {', '.join(f[2].key for f in found)} (use NAMESPACE/NAME)"
        )
    if not found:
        names = sorted(r.endpoint.key for view, _ in views for r in view.resolved.endpoints)
        usage_error(f"no endpoint {ref!r} on these nodes (endpoints: {', '.join(names) or 'none'})")
    return found[0]


def _labels(view: NodeView, identity: int) -> list[str]:
    if identity == 0:
        return ["(any peer)"]
    for known in view.resolved.identities:
        if known.id == identity:
            return [str(label) for label in known.labels]
    try:
        return [str(ReservedIdentity(identity).label)]
    except ValueError:
        return ["(not in the node's identities)"]


def _id_of(state: Any, ep: Any) -> int | None:
    """The endpoint id the ipcache gives one of the endpoint's addresses."""
    return next((i for i in map(state.endpoint_id, ep.ips) if i is not None), None)


def _port(proto: int | None, port: int, prefix: int) -> tuple[int | None, int | None]:
    """(first, last) port of an entry; (None, None) = every port."""
    if proto is None or prefix == 0:
        return None, None
    return port, port | ((1 << (16 - prefix)) - 1)


def _entry_rows(view: NodeView, entries: dict[Any, Any], dns_ports: set[int]) -> list[dict[str, Any]]:
    rows = []
    for key, value in entries.items():
        first, last = _port(key.proto, key.port, key.port_prefix)
        proxy = None
        if value.proxy_port:
            proxy = "DNS proxy" if value.proxy_port in dns_ports else "Envoy"
        rows.append(
            {
                "direction": key.direction.name.lower(),
                "peer_identity": key.peer_identity,
                "peer_labels": _labels(view, key.peer_identity),
                "protocol": "ANY" if key.proto is None else _PROTOCOLS.get(key.proto, str(key.proto)),
                "port": first,
                "port_end": last,
                "action": value.action.name.lower(),
                "proxy_port": value.proxy_port or None,
                "proxy": proxy,
            }
        )
    order = list(_PROTOCOLS.values())
    rows.sort(
        key=lambda r: (
            r["direction"],
            r["peer_identity"],
            r["port"] or 0,
            order.index(r["protocol"]) if r["protocol"] in order else len(order),
        )
    )
    return rows


def _port_text(row: dict[str, Any]) -> str:
    if row["port"] is None:
        return "any"
    return str(row["port"]) if row["port"] == row["port_end"] else f"{row['port']}-{row['port_end']}"


@bpf_policy_app.command("get")
def bpf_policy_get(  # noqa: PLR0917  (typer options)
    endpoint: Annotated[str, typer.Argument(help="NAME, NAMESPACE/NAME or a numeric endpoint id.")],
    lab: LabOpt = None,
    state_dir: StateDirOpt = None,
    node: NodeOpt = None,
    policies: PoliciesOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The policy map entries of one endpoint (peer identity and its labels, protocol, port, direction,
    allow/deny/redirect and the proxy), read from the pinned maps. Exit status 1 when the datapath has no
    maps or no entry for the endpoint (the agent is not running here, or has not applied it yet)."""
    from bpf.errors import DatapathError
    from bpf.pinned import read_state

    source = node_source(lab, state_dir, policies, endpoints)
    views = _views(source, node)
    by_id = endpoint.isdigit()
    candidates = [(v, st, None) for v, st in views] if by_id else [_find(views, endpoint)]
    for view, status, named in candidates:
        datapath = status.get("datapath")
        if not isinstance(datapath, str):
            typer.echo(f"error: the agent status of node {view.node} names no datapath", err=True)
            raise typer.Exit(EXIT_FAILURE)
        try:
            state = read_state(datapath)
        except DatapathError as exc:
            typer.echo(f"error: node {view.node}: {exc}", err=True)
            raise typer.Exit(EXIT_FAILURE) from None
        ep = named
        if ep is None:
            endpoint_id: int | None = int(endpoint)
            if endpoint_id not in state.endpoints:
                continue
            ep = next(
                (r.endpoint for r in view.resolved.endpoints if _id_of(state, r.endpoint) == endpoint_id),
                None,
            )
        else:
            endpoint_id = _id_of(state, ep)
        if endpoint_id is None or endpoint_id not in state.endpoints:
            typer.echo(
                f"error: {ep.key if ep else endpoint}: no endpoint entry in datapath {datapath} "
                "(not applied yet?)",
                err=True,
            )
            raise typer.Exit(EXIT_FAILURE)
        _print(view, status, ep, endpoint_id, state, output)
        return
    typer.echo(f"error: no node's datapath has endpoint id {endpoint}", err=True)
    raise typer.Exit(EXIT_FAILURE)


def _print(  # noqa: PLR0917
    view: NodeView, status: dict[str, Any], ep: Any, endpoint_id: int, state: Any, output: Output
) -> None:
    from bpf.maps import EndpointFlags

    dns = ((status.get("services") or {}).get("dns") or {}).get("ports") or []
    value = state.endpoints[endpoint_id]
    flags = int(value.flags)
    data = {
        "node": view.node,
        "datapath": status.get("datapath"),
        "endpoint": ep.key if ep is not None else None,
        "endpoint_id": endpoint_id,
        "identity": value.identity,
        "labels": _labels(view, value.identity),
        "ingress_enforced": bool(flags & EndpointFlags.INGRESS_ENFORCED),
        "egress_enforced": bool(flags & EndpointFlags.EGRESS_ENFORCED),
        "audit": bool(flags & EndpointFlags.AUDIT),
        "entries": _entry_rows(view, state.policy.get(endpoint_id, {}), {int(p) for p in dns}),
    }
    if output is not Output.table:
        emit(data, output)
        return
    enforcement = ", ".join(
        f"{d} {'enforced' if data[f'{d}_enforced'] else 'not enforced'}" for d in ("ingress", "egress")
    )
    typer.echo(
        f"endpoint {data['endpoint']} (id {endpoint_id}, identity {data['identity']}) on node {view.node}, "
        f"datapath {data['datapath']}: {enforcement}{', audit' if data['audit'] else ''}"
    )
    if not data["entries"]:
        enforced = [d for d in ("ingress", "egress") if data[f"{d}_enforced"]]
        verdict = f"every {' and '.join(enforced)} flow is denied" if enforced else "every flow is allowed"
        typer.echo(f"no policy map entries: {verdict}")
        return
    _table(
        "policy map entries",
        ["direction", "peer identity", "peer labels", "protocol", "port", "action", "proxy"],
        [
            [
                r["direction"],
                str(r["peer_identity"] or "any"),
                "\n".join(r["peer_labels"]),
                r["protocol"],
                _port_text(r),
                r["action"],
                f"{r['proxy_port']} ({r['proxy']})" if r["proxy_port"] else "",
            ]
            for r in data["entries"]
        ],
    )
