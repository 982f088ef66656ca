"""The selector cache: selector → the identities it selects, kept up to date as identities appear.

Shaped like Cilium's ``pkg/policy/selectorcache.go``: every selector in use is registered with the
users (local endpoints) that need it; when a new identity appears, only the selectors that *could*
match it are tested (an index by namespace, FQDN selector text and CIDR prefix), and the cache tells
its caller which users saw their selections change. Nothing here is proportional to the number of
selectors or identities per change, except for the few selectors no index applies to (entities,
cluster-wide label selectors without a namespace).

The universe of identities is the allocator's: identities are never withdrawn (the allocator keeps
every label set it numbered, so does this cache), which is what the from-scratch resolver does too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from l7.identity import Identity, IdentityAllocator
from l7.labels import CIDR, FQDN, NAMESPACE_KEY, LabelSet
from l7.policy import model
from l7.selectors import CIDRSelector, FQDNSelector, LabelSelector, Selector, WildcardSelector

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class _Cached:
    selector: Selector
    selected: frozenset[int]
    users: set[str] = field(default_factory=set)


def _namespaces(selector: LabelSelector) -> tuple[str, ...] | None:
    """The namespaces a label selector is limited to (an ``In`` requirement on the namespace key)."""
    for r in selector.requirements:
        if r.key == NAMESPACE_KEY and r.operator is model.Operator.IN:
            return r.values
    return None


class SelectorCache:
    """Selections of the selectors in use, with their users; see the module docstring."""

    def __init__(self, allocator: IdentityAllocator) -> None:
        self._allocator = allocator
        self._seen = 0  # how much of the allocator's log this cache has taken in
        self._cache: dict[Selector, _Cached] = {}
        self._by_namespace: dict[str, set[Selector]] = {}
        self._by_fqdn: dict[str, set[Selector]] = {}
        self._by_prefix: dict[Network, set[Selector]] = {}
        self._general: set[Selector] = set()  # no index applies: tested against every new identity
        self._identities: dict[int, LabelSet] = {}
        self._ids_by_namespace: dict[str, set[int]] = {}  # namespace label value (any source) → ids
        self._ids_by_fqdn: dict[str, set[int]] = {}  # fqdn:<selector> → ids
        self._ids_with_cidr: set[int] = set()  # ids with a cidr: label
        self._changed: set[str] = set()  # users whose selections changed, until taken

    def __len__(self) -> int:
        return len(self._cache)

    # -- selectors ---------------------------------------------------------------------------------
    def add_user(self, selector: Selector, user: str) -> frozenset[int] | None:
        """Register ``user`` of ``selector``; returns its selection (None: every identity)."""
        if isinstance(selector, WildcardSelector):
            return None
        cached = self._cache.get(selector)
        if cached is None:
            self.catch_up()
            identities = self._identities
            chosen = frozenset(i for i in self._possible(selector) if selector.matches(identities[i]))
            cached = _Cached(selector, chosen)
            self._cache[selector] = cached
            self._index(selector).add(selector)
        cached.users.add(user)
        return cached.selected

    def remove_user(self, selector: Selector, user: str) -> None:
        cached = self._cache.get(selector)
        if cached is None:
            return
        cached.users.discard(user)
        if not cached.users:
            del self._cache[selector]
            bucket = self._index(selector)
            bucket.discard(selector)

    def selected(self, selector: Selector) -> frozenset[int] | None:
        if isinstance(selector, WildcardSelector):
            return None
        cached = self._cache.get(selector)
        if cached is None:
            raise KeyError(f"selector {selector.key} is not in use")
        return cached.selected

    def _possible(self, selector: Selector) -> Iterable[int]:
        """The identities ``selector`` could select (the index in the other direction)."""
        if isinstance(selector, FQDNSelector):
            return self._ids_by_fqdn.get(selector.text, ())
        if isinstance(selector, CIDRSelector) and selector.prefix.prefixlen > 0:
            return self._ids_with_cidr
        if isinstance(selector, LabelSelector):
            names = _namespaces(selector)
            if names is not None:
                return [i for name in set(names) for i in self._ids_by_namespace.get(name, ())]
        return self._identities

    def _index(self, selector: Selector) -> set[Selector]:
        if isinstance(selector, FQDNSelector):
            return self._by_fqdn.setdefault(selector.text, set())
        if isinstance(selector, CIDRSelector) and selector.prefix.prefixlen > 0:
            return self._by_prefix.setdefault(selector.prefix, set())
        if isinstance(selector, LabelSelector):
            names = _namespaces(selector)
            if names is not None and len(names) == 1:
                return self._by_namespace.setdefault(names[0], set())
        return self._general

    # -- identities --------------------------------------------------------------------------------
    def take_changed(self) -> set[str]:
        """The users whose selections changed since the last call (after taking in new identities)."""
        self.catch_up()
        changed, self._changed = self._changed, set()
        return changed

    def catch_up(self) -> None:
        """Take in the identities allocated since the last call; the users whose selections changed
        are kept for :meth:`take_changed`."""
        fresh = self._allocator.since(self._seen)
        if not fresh:
            return
        self._seen += len(fresh)
        changed = self._changed
        for identity in fresh:
            self._identities[identity.id] = identity.labels
            for lb in identity.labels:
                if lb.key == NAMESPACE_KEY:
                    self._ids_by_namespace.setdefault(lb.value, set()).add(identity.id)
                elif lb.source == FQDN:
                    self._ids_by_fqdn.setdefault(lb.key, set()).add(identity.id)
                elif lb.source == CIDR:
                    self._ids_with_cidr.add(identity.id)
            for selector in self._candidates(identity):
                cached = self._cache[selector]
                if selector.matches(identity.labels):
                    cached.selected = cached.selected | {identity.id}
                    changed |= cached.users

    def _candidates(self, identity: Identity) -> Iterable[Selector]:
        labels = identity.labels
        found: set[Selector] = set(self._general)
        for value in labels.values(NAMESPACE_KEY):
            found |= self._by_namespace.get(value, set())
        for lb in labels:
            if lb.source == FQDN:
                found |= self._by_fqdn.get(lb.key, set())
            elif lb.source == CIDR:
                net = ipaddress.ip_network(lb.key, strict=False)
                for length in range(1, net.prefixlen + 1):
                    found |= self._by_prefix.get(net.supernet(new_prefix=length), set())
        return found
