"""Turn per-endpoint policy decisions into policy-map LPM entries (pure).

Input: :class:`PolicyDecision` values — (direction, peer identity or 0 for any peer, protocol or
None for any, destination port range, action). ICMP and ICMPv6 use the type as the "port".

Output: ``{PolicyEntryKey: PolicyEntryValue}`` for one endpoint, such that the kernel's lookup
(``bpf/lib/policy.h``) returns, for every packet, the decision the input means:

* per (direction, peer) the (proto, port) space is cut into segments with one final action each
  (deny beats allow, allow without L7 beats redirect, a peer's own redirect beats an inherited
  any-peer one, then the lowest proxy port), and
  every segment is covered by a minimal set of port prefixes; segments equal to the any-protocol
  fallback entry are left to it;
* a peer-specific entry set already merges the any-peer decisions for the same ports, because the
  kernel consults the any-peer entries only when the peer-specific lookup misses (deny excepted).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from bpf.maps import Action, Direction

PORT_MAX = 65535
ANY_PEER = 0


@dataclass(frozen=True)
class PolicyDecision:
    """One rule's outcome for an endpoint: ``proto`` None means every protocol and port."""

    direction: Direction
    peer_identity: int
    proto: int | None
    port_lo: int = 0
    port_hi: int = PORT_MAX
    action: Action = Action.ALLOW
    proxy_port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port_lo <= self.port_hi <= PORT_MAX:
            raise ValueError(f"bad port range {self.port_lo}-{self.port_hi}")
        if self.proto is None and (self.port_lo, self.port_hi) != (0, PORT_MAX):
            raise ValueError("a port range needs a protocol")
        if self.action == Action.NONE:
            raise ValueError("a decision needs an action")
        if (self.action == Action.REDIRECT) != (self.proxy_port != 0):
            raise ValueError("a redirect, and only a redirect, carries a proxy port")


@dataclass(frozen=True)
class PolicyEntryKey:
    """A policy map key: ``proto`` None = any protocol; ``port_prefix`` = leading port bits matched."""

    direction: Direction
    peer_identity: int
    proto: int | None
    port: int = 0
    port_prefix: int = 0


@dataclass(frozen=True)
class PolicyEntryValue:
    action: Action
    proxy_port: int = 0


def port_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """The minimal list of (port, prefix length) blocks covering exactly ``lo..hi``."""
    out: list[tuple[int, int]] = []
    while lo <= hi:
        size = 1 << 16 if lo == 0 else lo & -lo
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


def _rank(decision: PolicyDecision, inherited: bool) -> tuple[int, int, int]:
    """Deny, then allow, then the group's own redirect, then an inherited any-peer redirect.

    A peer-specific redirect already carries the port of the union of its L7 rule sets with the
    any-peer ones (the planner merges them), so it must beat an inherited any-peer redirect.
    """
    order = {Action.DENY: 0, Action.ALLOW: 1, Action.REDIRECT: 2}
    return (order[decision.action], int(inherited), decision.proxy_port)


def _combine(decisions: Iterable[tuple[PolicyDecision, bool]]) -> PolicyEntryValue | None:
    ranked = sorted(decisions, key=lambda item: _rank(*item))
    return PolicyEntryValue(ranked[0][0].action, ranked[0][0].proxy_port) if ranked else None


def _entries_for(
    direction: Direction, peer: int, decisions: list[tuple[PolicyDecision, bool]]
) -> dict[PolicyEntryKey, PolicyEntryValue]:
    """``decisions``: (decision, inherited from the any-peer group) pairs."""
    out: dict[PolicyEntryKey, PolicyEntryValue] = {}
    any_proto = [item for item in decisions if item[0].proto is None]
    fallback = _combine(any_proto)
    if fallback is not None:
        out[PolicyEntryKey(direction, peer, None)] = fallback
    protos = sorted({d.proto for d, _ in decisions if d.proto is not None})
    for proto in protos:
        ranged = [item for item in decisions if item[0].proto == proto] + any_proto
        cuts = sorted(
            {0, PORT_MAX + 1} | {d.port_lo for d, _ in ranged} | {d.port_hi + 1 for d, _ in ranged}
        )
        segments: list[tuple[int, int, PolicyEntryValue | None]] = []
        for lo, nxt in itertools.pairwise(cuts):
            hi = nxt - 1
            value = _combine(item for item in ranged if item[0].port_lo <= lo and hi <= item[0].port_hi)
            if segments and segments[-1][2] == value and segments[-1][1] == lo - 1:
                segments[-1] = (segments[-1][0], hi, value)
            else:
                segments.append((lo, hi, value))
        for lo, hi, value in segments:
            if value is None or value == fallback:
                continue
            for port, plen in port_prefixes(lo, hi):
                out[PolicyEntryKey(direction, peer, proto, port, plen)] = value
    return out


def policy_entries(decisions: Iterable[PolicyDecision]) -> dict[PolicyEntryKey, PolicyEntryValue]:
    """All policy map entries of one endpoint for ``decisions`` (any order, duplicates allowed)."""
    groups: dict[tuple[Direction, int], list[PolicyDecision]] = defaultdict(list)
    for d in decisions:
        groups[(d.direction, d.peer_identity)].append(d)
    out: dict[PolicyEntryKey, PolicyEntryValue] = {}
    for (direction, peer), ds in sorted(groups.items()):
        merged = [(d, False) for d in ds]
        if peer != ANY_PEER:
            merged += [(d, True) for d in groups.get((direction, ANY_PEER), [])]
        out.update(_entries_for(direction, peer, merged))
    return out


def lookup(
    entries: dict[PolicyEntryKey, PolicyEntryValue],
    direction: Direction,
    peer: int,
    proto: int,
    port: int,
    *,
    enforced: bool = True,
) -> tuple[Action, int]:
    """What the kernel decides for a packet (a model of ``bpf/lib/policy.h``, for tests and trace)."""

    def lpm(p: int) -> PolicyEntryValue | None:
        best: tuple[int, PolicyEntryValue] | None = None
        for k, v in entries.items():
            if k.direction != direction or k.peer_identity != p:
                continue
            if k.proto is None:
                length = 0
            elif k.proto == proto and port >> (16 - k.port_prefix) == k.port >> (16 - k.port_prefix):
                length = 1 + k.port_prefix
            else:
                continue
            if best is None or length > best[0]:
                best = (length, v)
        return best[1] if best else None

    specific = lpm(peer) if peer != ANY_PEER else None
    anyp = lpm(ANY_PEER)
    if (specific and specific.action == Action.DENY) or (anyp and anyp.action == Action.DENY):
        return (Action.DENY, 0)
    chosen = specific or anyp
    if chosen is not None:
        return (chosen.action, chosen.proxy_port)
    return (Action.DENY, 0) if enforced else (Action.ALLOW, 0)
