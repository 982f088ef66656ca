"""Pure helpers of the Envoy service: the HTTP rules behind each proxy port, and where the traffic of a
proxy port that went out of use is judged now (so its listener can be kept, with that port's routes,
while its keep-alive connections finish — a listener removal would drain them): :func:`retire` keeps
that bookkeeping from one applied view to the next."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet

from bpf.maps import Action
from l7.agent.services import AppliedView
from l7.plan import PlanError, direction_decisions
from l7.policy.model import HTTPRule
from l7.resolve.types import Direction, L7RuleSet
from l7xds.translate import RuleSet

RETIRE_AFTER = 300.0  # how long the listener of a port that went out of use is kept (see retire)


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


Retired = dict[int, tuple[int | None, float]]  # retired proxy port → (successor, retired since)


def retire(
    retired: Mapping[int, tuple[int | None, float]],
    old_ports: AbstractSet[int],
    new_ports: AbstractSet[int],
    *,
    old_redirects: Callable[[], Redirects],
    new_redirects: Callable[[], Redirects],
    now: float,
    keep: float = RETIRE_AFTER,
) -> tuple[Retired, set[int]]:
    """The retired proxy ports after a change from ``old_ports`` to ``new_ports`` (the HTTP proxy ports in
    use), and those of them whose listener denies everything.

    A port that goes out of use keeps its listener (a listener removal would drain its connections) for
    ``keep`` seconds; its routes become those of its successor, the port that now judges the same
    traffic (:func:`successors`, :func:`follow`), so a keep-alive connection's next request gets the new
    verdict, or deny everything when there is no single such port. A port back in use is no longer
    retired. The redirects (before, after) are computed only when a port went out of use."""
    gone = set(old_ports) - set(new_ports)
    found = successors(old_redirects(), new_redirects(), gone) if gone else {}
    merged = dict(retired)
    for port, successor in found.items():
        merged[port] = (successor, now)
    out: Retired = {
        port: (follow(successor, found, set(new_ports)), since)
        for port, (successor, since) in merged.items()
        if port not in new_ports and now - since <= keep
    }
    return out, {port for port, (successor, _) in out.items() if successor is None}
