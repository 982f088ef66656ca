"""Pure helpers of the Envoy service: the HTTP rules behind each proxy port, and where the traffic of a
proxy port that went out of use is judged now (so its listener can be kept, with that port's routes,
while its keep-alive connections finish — a listener removal would drain them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

from l7xds.translate import RuleSet

from bpf.maps import Action
from l7.agent.services import AppliedView
from l7.plan import PlanError, direction_decisions
from l7.policy.model import HTTPRule
from l7.resolve.types import Direction, L7RuleSet


def union_rules(members: Iterable[L7RuleSet]) -> RuleSet:
    """The HTTP rules of a union of rule sets: any rule of any member may match; a member without rules
    allows everything, so the union does too."""
    rules: list[HTTPRule] = []
    for member in members:
        if not member.http:
            return ()
        rules.extend(rule for rule in member.http if rule not in rules)
    return tuple(rules)


def http_ports(view: AppliedView) -> dict[int, RuleSet]:
    return {port: union_rules(members) for port, members in sorted(view.ports_of("http").items())}


Redirects = dict[tuple[str, int, int, int | None], list[tuple[int, int, int]]]


def redirects(view: AppliedView) -> Redirects:
    """(endpoint, direction, peer identity, protocol) → [(port lo, port hi, proxy port)] of the
    view's HTTP redirects."""
    http = set(view.ports_of("http"))
    out: Redirects = {}
    for resolved in view.local:
        key = f"{resolved.endpoint.namespace}/{resolved.endpoint.name}"
        for direction in Direction:
            try:
                decisions = direction_decisions(resolved.direction(direction), direction, view.ports)
            except PlanError:
                continue
            for d in decisions:
                if d.action is Action.REDIRECT and d.proxy_port in http:
                    out.setdefault((key, int(d.direction), d.peer_identity, d.proto), []).append(
                        (d.port_lo, d.port_hi, d.proxy_port)
                    )
    return out


def successors(before: Redirects, after: Redirects, gone: Iterable[int]) -> dict[int, int | None]:
    """For each proxy port that went out of use: the one port that now judges *all* the traffic it
    judged, or None (the traffic is split over several ports, or no longer all goes through Envoy)."""
    found: dict[int, set[int | None]] = {port: set() for port in gone}
    for flow, entries in before.items():
        later = after.get(flow, [])
        for lo, hi, port in entries:
            if port not in found:
                continue
            overlapping = [(a, b, p) for a, b, p in later if a <= hi and lo <= b]
            found[port].update(p for _, _, p in overlapping)
            covered = sum(min(b, hi) - max(a, lo) + 1 for a, b, _ in overlapping)  # segments are disjoint
            if covered < hi - lo + 1:
                found[port].add(None)
    return {port: next(iter(s)) if len(s) == 1 else None for port, s in found.items()}


def follow(successor: int | None, found: Mapping[int, int | None], active: AbstractSet[int]) -> int | None:
    """Where a retired port's traffic goes now: its successor, or the successor's successor when that
    went out of use too; None when it ends nowhere active."""
    seen: set[int] = set()
    while successor is not None and successor not in active and successor in found and successor not in seen:
        seen.add(successor)
        successor = found[successor]
    return successor if successor in active else None
