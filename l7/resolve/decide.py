"""The per-flow question the datapath and ``policy trace`` ask: allow, deny or redirect to a proxy?"""

from __future__ import annotations

import ipaddress

from l7.resolve.types import Decision, Direction, Reason, ResolvedEndpoint, ResolvedNode, Verdict


def decide(  # noqa: PLR0917  (the datapath's question, positional by design)
    resolved: ResolvedNode | ResolvedEndpoint,
    endpoint: str | None,
    direction: Direction,
    peer: int,
    protocol: str,
    port: int,
) -> Decision:
    """The verdict for a flow of ``endpoint`` (``namespace/name``) with ``peer`` (an identity).

    ``protocol`` is TCP, UDP, SCTP, ICMP or ICMPV6 (``port`` is then the ICMP type).

    1. a matching deny entry → deny (deny wins);
    2. no matching allow: not enforced → allow, enforced → deny (default deny);
    3. a matching allow without L7 → allow (a plain L4 allow wins over the same allow with L7);
    4. otherwise → redirect, with the union of the matching L7 rule sets.

    When default deny is off (no rule, or ``enableDefaultDeny: false``), matching allows still apply,
    so L7 rules of such a policy are enforced on their ports (as the datapath's more specific entry).
    """
    if isinstance(resolved, ResolvedNode):
        if endpoint is None:
            raise ValueError("endpoint is required with a ResolvedNode")
        resolved = resolved.endpoint(endpoint)
    policy = resolved.direction(direction)
    protocol = protocol.upper()
    denies = tuple(e.origin for e in policy.denies if e.matches(peer, protocol, port))
    if denies:
        return Decision(Verdict.DENY, Reason.DENY_RULE, denies, enforced=policy.enforced)
    allows = [e for e in policy.allows if e.matches(peer, protocol, port)]
    if not allows:
        if policy.enforced:
            return Decision(Verdict.DENY, Reason.DEFAULT_DENY, enforced=True)
        reason = Reason.DEFAULT_ALLOW if policy.selected_by else Reason.NO_POLICY
        return Decision(Verdict.ALLOW, reason, enforced=False)
    plain = tuple(e.origin for e in allows if e.l7 is None)
    if plain:
        return Decision(Verdict.ALLOW, Reason.ALLOW_RULE, plain, enforced=policy.enforced)
    sets = {e.l7.key: e.l7 for e in allows if e.l7 is not None}
    return Decision(
        Verdict.REDIRECT,
        Reason.L7,
        tuple(dict.fromkeys(e.origin for e in allows)),
        tuple(sets[k] for k in sorted(sets)),
        enforced=policy.enforced,
    )


def lookup_identity(resolved: ResolvedNode, ip: str) -> int:
    """Longest-prefix match of ``ip`` in the node's ipcache (world of its family when nothing else)."""
    address = ipaddress.ip_address(ip)
    best: tuple[int, int] | None = None
    for entry in resolved.ipcache:
        net = ipaddress.ip_network(entry.prefix)
        if net.version == address.version and address in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, entry.identity)
    assert best is not None  # 0.0.0.0/0 and ::/0 are always present
    return best[1]
