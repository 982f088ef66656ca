"""Stage 2: combine the contributions of every policy for each endpoint, select identities.

Incremental by memoisation on immutable inputs: stage 1 results are cached per (policy, endpoint
labels, named ports) and per-endpoint results per (endpoint, contributions, selections), so changing
one policy recomputes only that policy's pairs, and changing one endpoint only that endpoint's pairs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from l7.endpoints import Endpoint, Service, Topology
from l7.identity import IdentityAllocator, Network, ReservedIdentity
from l7.labels import LabelSet
from l7.policy import model
from l7.policy.cidr import parse_cidr
from l7.policy.documents import Policy
from l7.resolve.host import host_endpoint
from l7.resolve.rules import Contribution, DirectionContribution, contribute
from l7.resolve.types import (
    DirectionPolicy,
    Entry,
    FQDNUse,
    IPCacheEntry,
    L7RuleSet,
    ResolvedEndpoint,
    ResolvedNode,
    SelectorEntry,
)
from l7.selectors import (
    CIDRSelector,
    FQDNSelector,
    Selector,
    ServiceSelector,
    WildcardSelector,
    service_pod_selector,
    service_selector,
)


def policy_prefixes(policies: Iterable[Policy]) -> tuple[Network, ...]:
    """Every CIDR prefix the policies name (``except`` prefixes included), sorted."""
    found: set[Network] = set()
    for policy in policies:
        for rule in policy.rules:
            for peer in (*(rule.ingress or ()), *(rule.ingress_deny or ())):
                found.update(_prefixes(peer.from_cidr, peer.from_cidr_set))
            for epeer in (*(rule.egress or ()), *(rule.egress_deny or ())):
                found.update(_prefixes(epeer.to_cidr, epeer.to_cidr_set))
    return _sort_prefixes(found)


def _prefixes(cidrs: tuple[str, ...] | None, sets: tuple[model.CIDRRule, ...] | None) -> set[Network]:
    out = {parse_cidr(c, bare_ip=True) for c in cidrs or ()}
    for s in sets or ():
        out.add(parse_cidr(s.cidr, bare_ip=True))
        out.update(parse_cidr(e, bare_ip=True) for e in s.except_ or ())
    return out


def _sort_prefixes(found: Iterable[Network]) -> tuple[Network, ...]:
    return tuple(sorted(set(found), key=lambda n: (n.version, n.network_address.packed, n.prefixlen)))


def service_selectors(policies: Iterable[Policy]) -> tuple[ServiceSelector, ...]:
    """Every ``toServices`` entry of the policies (allow and deny), deduplicated, by key."""
    found: dict[ServiceSelector, None] = {}
    for policy in policies:
        for rule in policy.rules:
            for peer in (*(rule.egress or ()), *(rule.egress_deny or ())):
                for s in peer.to_services or ():
                    found.setdefault(service_selector(s))
    return tuple(sorted(found, key=lambda s: s.key))


def service_targets(selector: ServiceSelector, services: Iterable[Service]) -> tuple[Selector, ...]:
    """What a ``toServices`` entry selects among ``services``: for each matching Service with a
    selector, its pods (:func:`service_pod_selector`); for each one without, a /32 or /128 CIDR selector
    per backend IP (those prefixes get CIDR identities, see :func:`service_prefixes`)."""
    out: list[Selector] = []
    for svc in services:
        if not selector.selects(svc.name, svc.namespace, svc.label_set):
            continue
        if svc.selector is not None:
            out.append(service_pod_selector(svc.selector, svc.namespace))
        else:
            out += [CIDRSelector(ipaddress.ip_network(ip)) for ip in svc.backends]
    return tuple(out)


def service_prefixes(policies: Iterable[Policy], services: Iterable[Service]) -> tuple[Network, ...]:
    """The backend prefixes (/32, /128) of the selector-less Services some ``toServices`` selects."""
    found: set[Network] = set()
    known = tuple(services)
    for sel in service_selectors(policies):
        found.update(t.prefix for t in service_targets(sel, known) if isinstance(t, CIDRSelector))
    return _sort_prefixes(found)


def fqdn_selectors(policies: Iterable[Policy]) -> tuple[FQDNSelector, ...]:
    from l7.selectors import fqdn_selector

    found: dict[str, FQDNSelector] = {}
    for policy in policies:
        for rule in policy.rules:
            for peer in (*(rule.egress or ()), *(rule.egress_deny or ())):
                for f in getattr(peer, "to_fqdns", None) or ():
                    sel = fqdn_selector(f)
                    found.setdefault(sel.text, sel)
    return tuple(found[k] for k in sorted(found))


class SelectorCache:
    """selector → identities it selects, updated incrementally as identities come and go."""

    def __init__(self) -> None:
        self._identities: dict[int, LabelSet] = {}
        self._selections: dict[Selector, frozenset[int]] = {}
        self.generation = 0

    def update(self, identities: Mapping[int, LabelSet]) -> None:
        added = {i: lb for i, lb in identities.items() if self._identities.get(i) != lb}
        removed = set(self._identities) - set(identities)
        if not added and not removed:
            return
        self.generation += 1
        self._identities = dict(identities)
        for sel, chosen in list(self._selections.items()):
            updated = set(chosen) - removed - set(added)
            updated.update(i for i, lb in added.items() if sel.matches(lb))
            self._selections[sel] = frozenset(updated)

    def select(self, selector: Selector) -> frozenset[int] | None:
        if isinstance(selector, WildcardSelector):
            return None
        found = self._selections.get(selector)
        if found is None:
            found = frozenset(i for i, lb in self._identities.items() if selector.matches(lb))
            self._selections[selector] = found
        return found


@dataclass
class ResolverStats:
    """How much work the resolver did (cumulative): for tests and metrics."""

    pairs: int = 0
    endpoints: int = 0


class Resolver:
    """Resolves policies for the endpoints of one node.

    ``node`` names the local node: its addresses are ``host``, other nodes' their node-labels identity
    (``reserved:remote-node`` plus their labels; 6 without labels). Only
    endpoints on that node (or without a node) are resolved, unless ``all_endpoints`` (``policy
    trace`` needs the source and the destination) or ``node`` is None.
    """

    def __init__(
        self, allocator: IdentityAllocator, node: str | None = None, *, all_endpoints: bool = False
    ) -> None:
        self.allocator = allocator
        self.node = node
        self.all_endpoints = all_endpoints
        self.stats = ResolverStats()
        self._selectors = SelectorCache()
        self._pairs: dict[tuple[Policy, LabelSet, tuple[tuple[str, int], ...]], Contribution] = {}
        self._endpoints: dict[tuple[object, ...], ResolvedEndpoint] = {}
        self._services: tuple[Service, ...] = ()
        self._targets: dict[ServiceSelector, tuple[Selector, ...]] = {}

    def _pair(self, policy: Policy, endpoint: Endpoint) -> Contribution:
        key = (policy, endpoint.labels, endpoint.ports)
        found = self._pairs.get(key)
        if found is None:
            self.stats.pairs += 1
            found = contribute(policy, endpoint.labels, endpoint.ports)
            self._pairs[key] = found
        return found

    def resolve(
        self,
        policies: Sequence[Policy],
        topology: Topology,
        learned: Mapping[str, Iterable[str]] | None = None,
    ) -> ResolvedNode:
        """``learned``: IP → DNS names it was learned for (from the DNS proxy); those IPs get the
        identity of the set of FQDN selectors matching their names."""
        backends = service_prefixes(policies, topology.services)
        prefixes = _sort_prefixes((*policy_prefixes(policies), *backends))
        if topology.services != self._services:
            self._services = topology.services
            self._targets = {}
        for prefix in prefixes:
            self.allocator.cidr_identity(prefix)
        fqdns = fqdn_selectors(policies)
        learned_ids: dict[str, int] = {}
        for ip, names in sorted((learned or {}).items()):
            address = ipaddress.ip_address(ip)
            chosen = [s.text for s in fqdns if any(s.matches_name(n) for n in names)]
            learned_ids[ip] = self.allocator.fqdn_identity(chosen, address, prefixes).id
        self._selectors.update({i.id: i.labels for i in self.allocator})

        local = [
            e
            for e in topology.endpoints
            if self.all_endpoints or self.node is None or e.node in (None, self.node)
        ]
        used_pairs: set[tuple[Policy, LabelSet, tuple[tuple[str, int], ...]]] = set()
        used_eps: set[tuple[object, ...]] = set()
        named = _named_ports(topology.endpoints)
        resolved = []
        for endpoint in local:
            contributions = tuple(self._pair(p, endpoint) for p in policies)
            used_pairs.update((p, endpoint.labels, endpoint.ports) for p in policies)
            key = (endpoint, contributions, self._selectors.generation, named, self._services)
            used_eps.add(key)
            found = self._endpoints.get(key)
            if found is None:
                self.stats.endpoints += 1
                found = self._resolve_endpoint(endpoint, contributions, named)
                self._endpoints[key] = found
            resolved.append(found)
        self._pairs = {k: v for k, v in self._pairs.items() if k in used_pairs}
        self._endpoints = {k: v for k, v in self._endpoints.items() if k in used_eps}
        host = host_endpoint(topology.nodes, self.node)
        resolved_host = None
        if host is not None:  # one endpoint, resolved every time (not memoised)
            host_parts = tuple(contribute(p, host.labels, host.ports, host=True) for p in policies)
            resolved_host = self._resolve_endpoint(host, host_parts, named)

        return ResolvedNode(
            node=self.node,
            endpoints=tuple(resolved),
            identities=self.allocator.snapshot(),
            ipcache=self._ipcache(topology, prefixes, learned_ids),
            fqdn_selectors=fqdn_uses(resolved),
            http_rule_sets=rule_sets(resolved, "http"),
            dns_rule_sets=rule_sets(resolved, "dns"),
            host=resolved_host,
        )

    def _resolve_endpoint(
        self,
        endpoint: Endpoint,
        contributions: tuple[Contribution, ...],
        named: tuple[tuple[int, tuple[tuple[str, int], ...]], ...],
    ) -> ResolvedEndpoint:
        def direction(pick: str) -> DirectionPolicy:
            parts: list[tuple[str, DirectionContribution]] = [
                (c.policy, getattr(c, pick)) for c in contributions if c.selects
            ]
            parts = [(k, d) for k, d in parts if d.enabled]
            return DirectionPolicy(
                enforced=any(d.default_deny for _, d in parts),
                selected_by=tuple(k for k, _ in parts),
                allows=tuple(e for _, d in parts for s in d.allows for e in self._entries(s, named)),
                denies=tuple(e for _, d in parts for s in d.denies for e in self._entries(s, named)),
            )

        return ResolvedEndpoint(endpoint, direction("ingress"), direction("egress"))

    def _entries(
        self, s: SelectorEntry, named: tuple[tuple[int, tuple[tuple[str, int], ...]], ...]
    ) -> tuple[Entry, ...]:
        chosen = self._select(s.selector)
        if s.named_port is None:
            return (Entry(s.selector, chosen, s.protocol, s.lo, s.hi, s.origin, s.l7),)
        return named_port_entries(s, chosen, named)

    def _select(self, selector: Selector) -> frozenset[int] | None:
        """The identities ``selector`` selects; a ``toServices`` entry selects the union of its targets."""
        if not isinstance(selector, ServiceSelector):
            return self._selectors.select(selector)
        targets = self._targets.get(selector)
        if targets is None:
            targets = service_targets(selector, self._services)
            self._targets[selector] = targets
        chosen: set[int] = set()
        for target in targets:
            chosen |= self._selectors.select(target) or frozenset()
        return frozenset(chosen)

    def _ipcache(
        self, topology: Topology, prefixes: tuple[Network, ...], learned: Mapping[str, int]
    ) -> tuple[IPCacheEntry, ...]:
        entries: dict[str, int] = {
            "0.0.0.0/0": int(ReservedIdentity.WORLD_IPV4),
            "::/0": int(ReservedIdentity.WORLD_IPV6),
        }
        for prefix in prefixes:
            entries[str(prefix)] = self.allocator.cidr_identity(prefix).id
        for ip, identity in learned.items():
            entries[str(ipaddress.ip_network(ip))] = identity
        for node in topology.nodes:
            local = self.node is not None and node.name == self.node
            identity = int(ReservedIdentity.HOST) if local else node.identity
            for ip in node.ips:
                entries[str(ipaddress.ip_network(ip))] = identity
        for endpoint in topology.endpoints:
            for ip in endpoint.ips:
                entries[str(ipaddress.ip_network(ip))] = endpoint.identity
        return tuple(IPCacheEntry(p, i) for p, i in sorted(entries.items()))


def named_port_entries(
    s: SelectorEntry,
    chosen: frozenset[int] | None,
    named: tuple[tuple[int, tuple[tuple[str, int], ...]], ...],
) -> tuple[Entry, ...]:
    """An egress entry with a named port: one entry per port number the name has among the chosen
    peers (``named``: each identity's named ports)."""
    by_port: dict[int, set[int]] = {}
    for identity, ports in named:
        number = dict(ports).get(s.named_port or "")
        if number is not None and (chosen is None or identity in chosen):
            by_port.setdefault(number, set()).add(identity)
    return tuple(
        Entry(s.selector, frozenset(ids), s.protocol, port, port, s.origin, s.l7)
        for port, ids in sorted(by_port.items())
    )


def _named_ports(endpoints: Iterable[Endpoint]) -> tuple[tuple[int, tuple[tuple[str, int], ...]], ...]:
    return tuple(sorted({(e.identity, e.ports) for e in endpoints if e.ports}))


def fqdn_uses(resolved: Iterable[ResolvedEndpoint]) -> tuple[FQDNUse, ...]:
    users: dict[str, set[tuple[str, object]]] = {}
    for r in resolved:
        for entry in (*r.egress.allows, *r.egress.denies):
            if isinstance(entry.selector, FQDNSelector):
                users.setdefault(entry.selector.text, set()).add((r.endpoint.key, entry.origin))
    return tuple(
        FQDNUse(text, tuple(sorted(u, key=str)))  # type: ignore[arg-type]
        for text, u in sorted(users.items())
    )


def rule_sets(resolved: Iterable[ResolvedEndpoint], kind: str) -> tuple[L7RuleSet, ...]:
    found: dict[str, L7RuleSet] = {}
    for r in resolved:
        for entry in (*r.ingress.allows, *r.egress.allows):
            if entry.l7 is not None and entry.l7.kind == kind:
                found.setdefault(entry.l7.key, entry.l7)
    return tuple(found[k] for k in sorted(found))


def resolve(
    policies: Sequence[Policy],
    topology: Topology,
    allocator: IdentityAllocator,
    node: str | None = None,
    learned: Mapping[str, Iterable[str]] | None = None,
) -> ResolvedNode:
    """One-shot resolution (a fresh :class:`Resolver`)."""
    return Resolver(allocator, node).resolve(policies, topology, learned)
