"""The values resolution produces: immutable (frozen dataclasses and tuples), safe to share with sinks."""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from dataclasses import dataclass, field

from l7.endpoints import Endpoint
from l7.identity import Identity
from l7.policy import model
from l7.selectors import Selector


class Direction(enum.StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REDIRECT = "redirect"


class Reason(enum.StrEnum):
    NO_POLICY = "no-policy"  # no rule with rules in this direction selects the endpoint
    DEFAULT_ALLOW = "default-allow"  # selected, but every selecting rule disables default deny
    DENY_RULE = "deny-rule"
    ALLOW_RULE = "allow-rule"
    L7 = "l7"  # redirected to a proxy with the merged L7 rule sets
    DEFAULT_DENY = "default-deny"  # enforced and no rule allows it


#: Protocol of an L3-only entry: every protocol (TCP, UDP, SCTP, ICMP, ...) on every port.
ANY_PROTOCOL = "ANY"
L4_PROTOCOLS = ("TCP", "UDP", "SCTP")
ICMP_PROTOCOLS = {"IPv4": "ICMP", "IPv6": "ICMPV6"}


@dataclass(frozen=True)
class Origin:
    """Where an entry comes from: the policy key and the rule's field path."""

    policy: str
    path: str

    def __str__(self) -> str:
        return f"{self.policy} {self.path}"


@dataclass(frozen=True)
class L7RuleSet:
    """The HTTP or DNS rules of one ``toPorts[].rules``; ``key`` is a stable content hash."""

    kind: str  # "http" | "dns"
    http: tuple[model.HTTPRule, ...] = ()
    dns: tuple[model.DNSRule, ...] = ()
    # TLS (kind "http"): allowed SNI patterns (empty: any), and the proxy's TLS contexts; a set with
    # server names and no terminating context passes the TLS bytes through unread.
    server_names: tuple[str, ...] = ()
    terminating: model.TLSContext | None = None
    originating: model.TLSContext | None = None

    @property
    def tls(self) -> bool:
        return bool(self.server_names) or self.terminating is not None or self.originating is not None

    @functools.cached_property
    def key(self) -> str:
        rules = self.http if self.kind == "http" else self.dns
        dumped = [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in rules]
        parts: list[object] = [self.kind, dumped]
        if self.tls:
            parts.append(
                [
                    list(self.server_names),
                    *(
                        c.model_dump(mode="json", by_alias=True, exclude_none=True) if c is not None else None
                        for c in (self.terminating, self.originating)
                    ),
                ]
            )
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SelectorEntry:
    """An allow or deny before identities: a peer selector, an L4 match, optional L7 rules."""

    selector: Selector
    protocol: str  # TCP, UDP, SCTP, ICMP, ICMPV6 or ANY (L3-only)
    lo: int
    hi: int
    origin: Origin
    l7: L7RuleSet | None = None
    named_port: str | None = None  # egress named ports: resolved against the peer endpoints


@dataclass(frozen=True)
class Entry:
    """An allow or deny with the identities its selector currently selects (``None``: every peer)."""

    selector: Selector
    identities: frozenset[int] | None
    protocol: str
    lo: int
    hi: int
    origin: Origin
    l7: L7RuleSet | None = None

    def matches(self, peer: int, protocol: str, port: int) -> bool:
        if self.identities is not None and peer not in self.identities:
            return False
        if self.protocol == ANY_PROTOCOL:
            return True
        return self.protocol == protocol and self.lo <= port <= self.hi

    @property
    def ports(self) -> str:
        if self.protocol == ANY_PROTOCOL:
            return "any"
        if self.protocol in ICMP_PROTOCOLS.values():
            return f"{self.protocol} type {self.lo}"
        text = "*" if (self.lo, self.hi) == (0, 65535) else (
            str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"
        )
        return f"{text}/{self.protocol}"


@dataclass(frozen=True)
class DirectionPolicy:
    """One endpoint's policy in one direction.

    ``enforced``: default deny applies (some selecting rule has rules in this direction and does not
    set ``enableDefaultDeny`` false). ``selected_by``: keys of the policies with rules in this direction.
    """

    enforced: bool
    selected_by: tuple[str, ...]
    allows: tuple[Entry, ...]
    denies: tuple[Entry, ...]


@dataclass(frozen=True)
class ResolvedEndpoint:
    endpoint: Endpoint
    ingress: DirectionPolicy
    egress: DirectionPolicy

    def direction(self, direction: Direction) -> DirectionPolicy:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True)
class IPCacheEntry:
    prefix: str
    identity: int


@dataclass(frozen=True)
class FQDNUse:
    """An FQDN selector in use, with the endpoints and rules that use it."""

    selector: str
    users: tuple[tuple[str, Origin], ...]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: Reason
    origins: tuple[Origin, ...] = ()
    l7: tuple[L7RuleSet, ...] = ()
    enforced: bool = False


@dataclass(frozen=True)
class ResolvedNode:
    """The resolved policy of a node: per-endpoint policies and what the sinks need besides."""

    node: str | None
    endpoints: tuple[ResolvedEndpoint, ...]
    identities: tuple[Identity, ...]
    ipcache: tuple[IPCacheEntry, ...]
    fqdn_selectors: tuple[FQDNUse, ...]
    http_rule_sets: tuple[L7RuleSet, ...]
    dns_rule_sets: tuple[L7RuleSet, ...]
    host: ResolvedEndpoint | None = None  # the node's host endpoint (l7.resolve.host), when it is known
    _index: dict[str, ResolvedEndpoint] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        self._index.update({r.endpoint.key: r for r in self.endpoints})
        if self.host is not None:
            self._index[self.host.endpoint.key] = self.host

    def endpoint(self, key: str) -> ResolvedEndpoint:
        """By ``namespace/name`` (the host endpoint: ``reserved:host/<node>``); :class:`KeyError` when
        the endpoint is not resolved here."""
        return self._index[key]
