"""Policy decisions → LPM entries: the kernel's lookup semantics give the intended answer."""

from __future__ import annotations

import random

import pytest

from bpf.maps import Action, Direction
from bpf.policy_entries import PolicyDecision, lookup, policy_entries, port_prefixes

IN = Direction.INGRESS


def intended(decisions: list[PolicyDecision], peer: int, proto: int, port: int) -> tuple[Action, int]:
    """Deny beats allow, allow beats redirect; the peer's own redirect beats an any-peer one (then the
    lowest proxy port); nothing matching → default deny."""
    hits = [
        d
        for d in decisions
        if d.direction == IN
        and d.peer_identity in (0, peer)
        and (d.proto is None or (d.proto == proto and d.port_lo <= port <= d.port_hi))
    ]
    if not hits:
        return (Action.DENY, 0)
    order = {Action.DENY: 0, Action.ALLOW: 1, Action.REDIRECT: 2}
    best = min(hits, key=lambda d: (order[d.action], d.peer_identity == 0, d.proxy_port))
    return (best.action, best.proxy_port if best.action == Action.REDIRECT else 0)


@pytest.mark.parametrize(("lo", "hi"), [(0, 65535), (80, 80), (1000, 2000), (1, 65534), (443, 8080)])
def test_port_prefixes_cover_exactly(lo: int, hi: int) -> None:
    covered = set()
    for port, plen in port_prefixes(lo, hi):
        size = 1 << (16 - plen)
        assert port % size == 0
        block = set(range(port, port + size))
        assert not covered & block
        covered |= block
    assert covered == set(range(lo, hi + 1))


def test_full_range_is_one_entry() -> None:
    assert port_prefixes(0, 65535) == [(0, 0)]
    assert port_prefixes(80, 80) == [(80, 16)]


def test_overlapping_ranges_and_peers_random() -> None:
    rng = random.Random(7)
    peers = [0, 1001, 1002]
    protos = [6, 17]
    for _ in range(60):
        decisions = []
        for _ in range(rng.randint(1, 6)):
            action = rng.choice([Action.ALLOW, Action.DENY, Action.REDIRECT])
            proxy = rng.choice([15001, 15002]) if action == Action.REDIRECT else 0
            if rng.random() < 0.15:
                decisions.append(PolicyDecision(IN, rng.choice(peers), None, action=action, proxy_port=proxy))
                continue
            lo = rng.choice([0, 1, 53, 79, 80, 81, 443, 1000, 8080])
            hi = min(65535, lo + rng.choice([0, 1, 7, 100, 1500, 65535]))
            decisions.append(PolicyDecision(IN, rng.choice(peers), rng.choice(protos), lo, hi, action, proxy))
        entries = policy_entries(decisions)
        for peer in (1001, 1002, 1003):
            for proto in (6, 17, 1):
                for port in (0, 1, 52, 53, 54, 79, 80, 81, 442, 443, 999, 1000, 1001, 1500, 8080, 65535):
                    got = lookup(entries, IN, peer, proto, port)
                    assert got == intended(decisions, peer, proto, port), (decisions, peer, proto, port)


def test_peer_entry_merges_any_peer_redirect_and_allow() -> None:
    decisions = [
        PolicyDecision(IN, 0, 6, 80, 80, Action.REDIRECT, 15001),
        PolicyDecision(IN, 1001, 6, 0, 65535, Action.ALLOW),
    ]
    entries = policy_entries(decisions)
    # L4 allow without L7 beats the any-peer redirect for that peer …
    assert lookup(entries, IN, 1001, 6, 80) == (Action.ALLOW, 0)
    # … while other peers are redirected
    assert lookup(entries, IN, 1002, 6, 80) == (Action.REDIRECT, 15001)


def test_invalid_decisions_are_rejected() -> None:
    with pytest.raises(ValueError, match="port range"):
        PolicyDecision(IN, 0, 6, 90, 80)
    with pytest.raises(ValueError, match="protocol"):
        PolicyDecision(IN, 0, None, 80, 80)
    with pytest.raises(ValueError, match="proxy port"):
        PolicyDecision(IN, 0, 6, 80, 80, Action.REDIRECT)


def test_peer_redirect_beats_any_peer_redirect_whatever_the_ports() -> None:
    """The planner gives a peer the port of the union of its L7 sets with the any-peer ones."""
    decisions = [
        PolicyDecision(IN, 0, 6, 80, 80, Action.REDIRECT, 10001),
        PolicyDecision(IN, 1001, 6, 80, 80, Action.REDIRECT, 19999),
    ]
    entries = policy_entries(decisions)
    assert lookup(entries, IN, 1001, 6, 80) == (Action.REDIRECT, 19999)
    assert lookup(entries, IN, 1002, 6, 80) == (Action.REDIRECT, 10001)
