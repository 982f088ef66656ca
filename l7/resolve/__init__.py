"""Resolution: policies × endpoints × identities → an immutable per-node policy value.

::

    Policy values ──► rules.contribute(policy, endpoint)      stage 1, memoised per pair
                          │ SelectorEntry (peer selector, L4, L7, origin)
                          ▼
    identities ──► SelectorCache ──► Resolver.resolve() ──► ResolvedNode
                                       per endpoint: DirectionPolicy(enforced, allows, denies)
                                       + identities, ipcache, FQDN selectors, HTTP/DNS rule sets
                                                          │
                                            decide(resolved, endpoint, direction, peer, proto, port)
"""

from l7.resolve.decide import decide, lookup_identity
from l7.resolve.resolver import (
    Resolver,
    ResolverStats,
    SelectorCache,
    fqdn_selectors,
    policy_prefixes,
    resolve,
    service_prefixes,
    service_selectors,
    service_targets,
)
from l7.resolve.rules import contribute
from l7.resolve.types import (
    Decision,
    Direction,
    DirectionPolicy,
    Entry,
    FQDNUse,
    IPCacheEntry,
    L7RuleSet,
    Origin,
    Reason,
    ResolvedEndpoint,
    ResolvedNode,
    SelectorEntry,
    Verdict,
)

__all__ = [
    "Decision",
    "Direction",
    "DirectionPolicy",
    "Entry",
    "FQDNUse",
    "IPCacheEntry",
    "L7RuleSet",
    "Origin",
    "Reason",
    "ResolvedEndpoint",
    "ResolvedNode",
    "Resolver",
    "ResolverStats",
    "SelectorCache",
    "SelectorEntry",
    "Verdict",
    "contribute",
    "decide",
    "fqdn_selectors",
    "lookup_identity",
    "policy_prefixes",
    "resolve",
    "service_prefixes",
    "service_selectors",
    "service_targets",
]
