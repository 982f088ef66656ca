"""The desired datapath state of a node: a pure function of the resolved policy (whole, or per endpoint).

::

    ResolvedNode ─┬─► endpoints  (endpoint id, ifindex, identity, enforcement per direction)
    interfaces ───┤─► ipcache    (prefix → identity, local endpoint id)
    proxy ports ──┴─► policy     (endpoint id → PolicyDecision list)

Translation of :class:`l7.resolve.Entry` values:

* ``identities`` None (every peer) → peer identity 0; an empty set selects nobody → no decision;
* protocol ``ANY`` (an L3-only rule) → ``proto`` None (every protocol and port); TCP/UDP/SCTP → 6/17/132
  with the port range; ICMP/ICMPv6 → 1/58 with the type as the "port";
* deny entries → DENY; allow entries without L7 → ALLOW; allow entries with L7 → REDIRECT.

L7: where several L7 rule sets apply to the same (direction, peer, protocol, port) — e.g. one rule for
``env: prod`` and one for every peer on port 80 — the traffic must be judged by their *union*, so the
redirect carries the proxy port of the union. :func:`l7_unions` lists the unions a node needs (key →
rule sets). A union's key is a hash of *where* its rules are written (policy and field path of each
``toPorts`` entry, :func:`union_key`), so editing rules in place keeps the port and Envoy's listener
(only routes change). :class:`ProxyPorts` assigns each key a port, stable across runs.

Endpoint ids are the ifindex of the endpoint's host-side veth (unique in the node's namespace, never 0,
and the same after an agent restart, so adopted map entries keep their keys).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from bpf.maps import HOST_ENDPOINT_ID, PROXY_PORT_PROTOCOLS, Action
from bpf.maps import Direction as DpDirection
from bpf.policy_entries import PolicyDecision
from l7.errors import L7GateError
from l7.resolve.types import (
    ANY_PROTOCOL,
    Direction,
    DirectionPolicy,
    Entry,
    L7RuleSet,
    Origin,
    ResolvedEndpoint,
    ResolvedNode,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Where proxy ports are chosen (Envoy listeners, DNS proxy sockets). Only the ports actually chosen are
# protected by the datapath (``l7g_proxy_ports``, written by the agent), not this range: node services on
# other ports in it stay reachable. The ports of well-known node services in the range are never chosen
# (the proxy's wildcard listener would collide with the service, and a pod's direct connection to the
# service would be dropped as one to a proxy port).
PROXY_PORT_MIN = 10000
PROXY_PORT_MAX = 19999
NODE_SERVICE_PORTS: frozenset[int] = frozenset(
    {
        10248,  # kubelet healthz
        10249,  # kube-proxy metrics
        10250,  # kubelet API (metrics-server, kubectl logs/exec)
        10255,  # kubelet read-only
        10256,  # kube-proxy healthz
        10257,  # kube-controller-manager
        10259,  # kube-scheduler
    }
)

PROTO_NUMBERS: Mapping[str, int] = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPV6": 58}
PORT_MAX = 65535


def datapath_direction(direction: Direction) -> DpDirection:
    """The datapath's wire value (``DIR_*`` in ``bpf/lib``) of a resolver direction.

    The two enums are one concept at two layers: ``bpf`` imports nothing of ``l7``, so its
    :class:`bpf.maps.Direction` is the C value, and ``l7`` speaks :class:`l7.resolve.Direction` (the
    policy's ``ingress``/``egress``). Planning is where they meet, and this is the only conversion.
    """
    return DpDirection[direction.name]


@dataclass(frozen=True, order=True)
class EndpointState:
    endpoint_id: int
    ifindex: int
    identity: int
    ingress_enforced: bool
    egress_enforced: bool
    key: str = ""  # namespace/name, for logs
    audit: bool = False  # would-be drops are allowed and reported with verdict audit


@dataclass(frozen=True)
class IpcacheState:
    identity: int
    endpoint_id: int = 0


@dataclass(frozen=True)
class DesiredState:
    endpoints: Mapping[int, EndpointState]  # by endpoint id
    ipcache: Mapping[IPNetwork, IpcacheState]
    policy: Mapping[int, tuple[PolicyDecision, ...]]  # by endpoint id
    missing: tuple[str, ...] = ()  # local endpoints without an interface (not programmed)


class PlanError(L7GateError):
    """The inputs are inconsistent (e.g. a needed proxy port was not assigned)."""


# --------------------------------------------------------------------------------------------- L7
AUDIT_PREFIX = "audit-"


def audit_key(key: str) -> str:
    """The key of ``key``'s union as seen by endpoints in audit mode: its own proxy port, whose
    listener lets would-be-denied requests through and logs them as audit."""
    return AUDIT_PREFIX + key


def is_audit_key(key: str) -> bool:
    return key.startswith(AUDIT_PREFIX)


def union_key(origins: Iterable[Origin]) -> str:
    """The key of the union of the L7 rules written at ``origins`` (policy and field path of each
    ``toPorts`` entry). Keyed by *where* the rules are written, not by their content: editing a rule in
    place keeps its key, so its proxy port — and Envoy's listener — stay, and only the routes change
    (RDS: applied on the next request of open connections, no drain)."""
    keys = sorted({str(o) for o in origins})
    if not keys:
        raise PlanError("union of no rules")
    return "o-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _L7Segment:
    peer: int
    proto: int
    lo: int
    hi: int
    rule_sets: tuple[L7RuleSet, ...]  # sorted by key, distinct
    origins: tuple[Origin, ...]  # where they are written (sorted, distinct)


def _proto(entry: Entry) -> int | None:
    if entry.protocol == ANY_PROTOCOL:
        return None
    try:
        return PROTO_NUMBERS[entry.protocol]
    except KeyError:
        raise PlanError(f"unknown protocol {entry.protocol!r} ({entry.origin})") from None


def _l7_segments(policy: DirectionPolicy) -> list[_L7Segment]:
    """Per (peer, proto, port segment): the distinct L7 rule sets that apply to it."""
    l7 = [e for e in policy.allows if e.l7 is not None and (e.identities is None or e.identities)]
    if not l7:
        return []
    peers = {0} | {i for e in l7 if e.identities is not None for i in e.identities}
    out: list[_L7Segment] = []
    for peer in sorted(peers):
        applicable = [e for e in l7 if e.identities is None or (peer != 0 and peer in e.identities)]
        for proto in sorted({p for e in applicable if (p := _proto(e)) is not None}):
            ranged = [e for e in applicable if _proto(e) == proto]
            cuts = sorted({0, PORT_MAX + 1} | {e.lo for e in ranged} | {e.hi + 1 for e in ranged})
            for lo, nxt in itertools.pairwise(cuts):
                hi = nxt - 1
                covering = [e for e in ranged if e.l7 is not None and e.lo <= lo and hi <= e.hi]
                if not covering:
                    continue
                sets = {e.l7.key: e.l7 for e in covering if e.l7 is not None}
                members = tuple(sets[k] for k in sorted(sets))
                origins = tuple(sorted({e.origin for e in covering}, key=str))
                prev = out[-1] if out else None
                if (
                    prev is not None
                    and (prev.peer, prev.proto, prev.rule_sets, prev.origins)
                    == (peer, proto, members, origins)
                    and prev.hi == lo - 1
                ):
                    out[-1] = _L7Segment(peer, proto, prev.lo, hi, members, origins)
                else:
                    out.append(_L7Segment(peer, proto, lo, hi, members, origins))
    return out


def endpoint_unions(r: ResolvedEndpoint, audit: bool = False) -> dict[str, tuple[L7RuleSet, ...]]:
    """The L7 rule-set unions one endpoint's redirects use: key → its member rule sets."""
    out: dict[str, tuple[L7RuleSet, ...]] = {}
    for direction in Direction:
        for seg in _l7_segments(r.direction(direction)):
            key = union_key(seg.origins)
            out.setdefault(audit_key(key) if audit else key, seg.rule_sets)
    return out


def l7_unions(
    resolved: ResolvedNode, audited: AbstractSet[str] = frozenset()
) -> dict[str, tuple[L7RuleSet, ...]]:
    """Every L7 rule-set union the node's redirects use: key → its member rule sets (sorted by key).
    Endpoints in ``audited`` use the audit variant of each union (:func:`audit_key`)."""
    out: dict[str, tuple[L7RuleSet, ...]] = {}
    for r in resolved.endpoints:
        for key, members in endpoint_unions(r, r.endpoint.key in audited).items():
            out.setdefault(key, members)
    return dict(sorted(out.items()))


class ProxyPorts:
    """Union key → proxy port. A key's preferred port is a hash of the key (linear probing on collision;
    :data:`NODE_SERVICE_PORTS` skipped), so ports are the same on every node and after a restart;
    :meth:`save`/:meth:`load` keep the ports of colliding keys stable too. Ports are never taken back
    from a key that goes out of use.

    The datapath protects exactly the ports of this table (:meth:`protected`): the ports of the unions
    in use, and those of unions that went out of use — their listeners may still be open (Envoy keeps a
    retired listener for its keep-alive connections; a restarted agent's first publish replaces the
    listeners of the one before) and the port comes back with its key."""

    def __init__(self, ports: Mapping[str, int] | None = None) -> None:
        self._ports: dict[str, int] = dict(ports or {})

    @property
    def ports(self) -> dict[str, int]:
        return dict(self._ports)

    def assign(self, keys: Iterable[str]) -> bool:
        """Give every key a port; ``True`` when a new port was assigned."""
        taken = set(self._ports.values())
        changed = False
        size = PROXY_PORT_MAX - PROXY_PORT_MIN + 1
        for key in sorted(set(keys) - set(self._ports)):
            start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % size
            for step in range(size):
                port = PROXY_PORT_MIN + (start + step) % size
                if port not in taken and port not in NODE_SERVICE_PORTS:
                    break
            else:
                raise PlanError("proxy port range exhausted")
            self._ports[key] = port
            taken.add(port)
            changed = True
        return changed

    def protected(self) -> frozenset[tuple[int, int]]:
        """(port, protocol) pairs the datapath must protect: every port of the table, TCP and UDP (a
        union's kind — Envoy, TCP; DNS proxy, UDP and TCP — may change under the same key)."""
        return frozenset((port, proto) for port in self._ports.values() for proto in PROXY_PORT_PROTOCOLS)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "ports": self._ports}, indent=1, sort_keys=True))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ProxyPorts:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls({str(k): int(v) for k, v in data["ports"].items()})


# --------------------------------------------------------------------------------------- decisions
def _peers(entry: Entry) -> list[int]:
    return [0] if entry.identities is None else sorted(entry.identities)


def direction_decisions(
    policy: DirectionPolicy, direction: Direction, proxy_ports: Mapping[str, int], audit: bool = False
) -> list[PolicyDecision]:
    """The policy decisions of one endpoint in one direction."""
    wire = datapath_direction(direction)
    out: list[PolicyDecision] = []
    for action, entries in ((Action.DENY, policy.denies), (Action.ALLOW, policy.allows)):
        for e in entries:
            if action is Action.ALLOW and e.l7 is not None:
                continue
            proto = _proto(e)
            lo, hi = (0, PORT_MAX) if proto is None else (e.lo, e.hi)
            out += [PolicyDecision(wire, p, proto, lo, hi, action) for p in _peers(e)]
    for seg in _l7_segments(policy):
        key = union_key(seg.origins)
        if audit:
            key = audit_key(key)
        if key not in proxy_ports:
            raise PlanError(f"no proxy port assigned for L7 rule set {key}")
        out.append(
            PolicyDecision(wire, seg.peer, seg.proto, seg.lo, seg.hi, Action.REDIRECT, proxy_ports[key])
        )
    return sorted(set(out), key=_decision_order)


def _decision_order(d: PolicyDecision) -> tuple[int, int, int, int, int, int, int]:
    return (
        int(d.direction),
        d.peer_identity,
        -1 if d.proto is None else d.proto,
        d.port_lo,
        d.port_hi,
        int(d.action),
        d.proxy_port,
    )


def endpoint_plan(
    r: ResolvedEndpoint, ifindex: int, proxy_ports: Mapping[str, int], audit: bool = False
) -> tuple[EndpointState, tuple[PolicyDecision, ...]]:
    """One local endpoint's datapath state: its endpoint entry and its policy decisions."""
    ep = r.endpoint
    if ifindex <= 0:
        raise PlanError(f"{ep.key}: bad ifindex {ifindex}")
    state = EndpointState(
        endpoint_id=ifindex,
        ifindex=ifindex,
        identity=ep.identity,
        ingress_enforced=r.ingress.enforced,
        egress_enforced=r.egress.enforced,
        key=ep.key,
        audit=audit,
    )
    decisions: list[PolicyDecision] = []
    for direction in Direction:
        decisions += direction_decisions(r.direction(direction), direction, proxy_ports, audit)
    return state, tuple(decisions)


def host_plan(r: ResolvedEndpoint | None) -> tuple[EndpointState, tuple[PolicyDecision, ...]] | None:
    """The host endpoint's datapath state (``l7.resolve.host``): endpoint id ``HOST_ENDPOINT_ID``, no
    device of its own (ifindex 0: the uplink and pod hooks enforce it), identity ``host``, and its
    L3/L4 decisions (host policies have no L7, so no proxy port is ever needed).

    None when no host policy selects the node: nothing is written, and the datapath does not enforce
    a host without an entry (as Cilium: host enforcement starts once a host policy selects the node)."""
    if r is None or not (r.ingress.selected_by or r.egress.selected_by):
        return None
    state = EndpointState(
        endpoint_id=HOST_ENDPOINT_ID,
        ifindex=0,
        identity=r.endpoint.identity,
        ingress_enforced=r.ingress.enforced,
        egress_enforced=r.egress.enforced,
        key=r.endpoint.key,
    )
    decisions: list[PolicyDecision] = []
    for direction in Direction:
        decisions += direction_decisions(r.direction(direction), direction, {})
    return state, tuple(decisions)


def plan(
    resolved: ResolvedNode,
    interfaces: Mapping[str, int],
    proxy_ports: Mapping[str, int],
    audited: AbstractSet[str] = frozenset(),
) -> DesiredState:
    """The datapath state for ``resolved``.

    ``interfaces``: endpoint key (``namespace/name``) → ifindex of its host-side veth, for the endpoints
    that live on this node; resolved endpoints without one are listed in ``missing`` and not programmed.
    ``proxy_ports``: union key (see :func:`l7_unions`) → proxy port.
    ``audited``: keys of the endpoints in audit mode.
    """
    endpoints: dict[int, EndpointState] = {}
    policy: dict[int, tuple[PolicyDecision, ...]] = {}
    by_ip: dict[IPNetwork, int] = {}
    missing: list[str] = []
    for r in resolved.endpoints:
        ep = r.endpoint
        ifindex = interfaces.get(ep.key)
        if ifindex is None:
            missing.append(ep.key)
            continue
        state, decisions = endpoint_plan(r, ifindex, proxy_ports, ep.key in audited)
        endpoints[state.endpoint_id] = state
        policy[state.endpoint_id] = decisions
        for ip in ep.ips:
            by_ip[ipaddress.ip_network(ip)] = state.endpoint_id
    host = host_plan(resolved.host)
    if host is not None and resolved.host is not None:  # the node's addresses carry the host's id
        state, decisions = host
        endpoints[state.endpoint_id] = state
        policy[state.endpoint_id] = decisions
        for ip in resolved.host.endpoint.ips:
            by_ip[ipaddress.ip_network(ip)] = state.endpoint_id
    ipcache: dict[IPNetwork, IpcacheState] = {}
    for entry in resolved.ipcache:
        net = ipaddress.ip_network(entry.prefix)
        ipcache[net] = IpcacheState(entry.identity, by_ip.get(net, 0))
    return DesiredState(endpoints, ipcache, policy, tuple(missing))
