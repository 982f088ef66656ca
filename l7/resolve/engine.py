"""The incremental policy engine: the state of one node, updated per change, never recomputed whole.

::

    policy upserted/removed ──► local endpoints in its namespace (all, if cluster-wide): contributions
    endpoint added/changed  ──► that endpoint: contributions of the policies of its namespace;
                                ipcache entries of its IPs; the named-port table
    identity allocated      ──► SelectorCache: selectors that may match it (indexed) ──► their users
    DNS answer (learn)      ──► name → FQDN selectors (once per name) ──► selector-set identity
                                ──► ipcache entry (+ users of the selectors, when the identity is new)
    services / CIDR prefixes / FQDN selectors in use ──► what depends on exactly them
                                          │
                       dirty local endpoints re-resolved ──► Changes(endpoints, ipcache)

:meth:`Engine.take_changes` says which local endpoints' :class:`ResolvedEndpoint` changed and which
ipcache entries changed since the last call; the agent applies exactly that to the datapath.
:meth:`Engine.snapshot` builds the whole :class:`ResolvedNode` (linear in the node's state: for
``policy trace``, tests and status, not for the per-change path).

Correctness oracle: for the same inputs, ``snapshot()`` equals a from-scratch
:func:`l7.resolve.resolve` (``tests/unit/resolve/test_engine_property.py``). Inputs are values
(policies and endpoints are compared by identity first, then by value), keyed by their names; no
policy model is hashed.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import socket
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from l7.endpoints import Endpoint, Node, Service, Topology
from l7.identity import IdentityAllocator, Network, ReservedIdentity
from l7.policy.documents import Policy
from l7.policy.fqdn import normalize
from l7.resolve.host import host_endpoint, is_host_key
from l7.resolve.resolver import (
    fqdn_selectors,
    fqdn_uses,
    named_port_entries,
    policy_prefixes,
    rule_sets,
    service_selectors,
    service_targets,
)
from l7.resolve.rules import Contribution, DirectionContribution, contribute
from l7.resolve.selector_cache import SelectorCache
from l7.resolve.types import (
    DirectionPolicy,
    Entry,
    IPCacheEntry,
    ResolvedEndpoint,
    ResolvedNode,
    SelectorEntry,
)
from l7.selectors import CIDRSelector, FQDNSelector, Selector, ServiceSelector

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
NamedPorts = tuple[tuple[int, tuple[tuple[str, int], ...]], ...]

WORLD = {"0.0.0.0/0": int(ReservedIdentity.WORLD_IPV4), "::/0": int(ReservedIdentity.WORLD_IPV6)}


@dataclass(frozen=True)
class Changes:
    """What changed since the last :meth:`Engine.take_changes`."""

    endpoints: frozenset[str]  # local endpoint keys whose resolution changed, appeared or went away
    ipcache: Mapping[str, int | None]  # prefix → its identity now (None: no entry any more)

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.ipcache)


def host_prefix(ip: str) -> str:
    """``10.0.0.1`` → ``10.0.0.1/32`` (the ipcache key of one address)."""
    return f"{ip}/32" if ":" not in ip else f"{ipaddress.ip_address(ip)}/128"


def _prefix_key(prefix: Network) -> tuple[int, int, int]:
    return (
        prefix.version,
        int(prefix.network_address) >> (prefix.max_prefixlen - prefix.prefixlen),
        prefix.prefixlen,
    )


def address_of(ip: str) -> Address:
    """``ipaddress.ip_address`` for canonical address text, ~6x faster (through the packed form)."""
    try:
        if ":" in ip:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, ip))
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, ip))
    except OSError:
        return ipaddress.ip_address(ip)  # raises ValueError with the usual message


@functools.lru_cache(maxsize=1 << 18)
def network(prefix: str) -> Network:
    """The network of an ipcache key (parsed once: tens of thousands of keys; an address's host
    prefix from its packed form, a third of ``ip_network``'s string parsing at the cold start)."""
    addr, _, length = prefix.partition("/")
    try:
        if ":" in addr:
            if length == "128":
                return ipaddress.IPv6Network(socket.inet_pton(socket.AF_INET6, addr))
        elif length == "32":
            return ipaddress.IPv4Network(socket.inet_pton(socket.AF_INET, addr))
    except OSError:
        pass  # not an address inet_pton knows: ip_network says why
    return ipaddress.ip_network(prefix)


def name_suffixes(name: str) -> list[str]:
    """``A.b.c.`` → ``["a.b.c", "b.c", "c", ""]``: the label suffixes an FQDN selector can be indexed
    under (see :func:`index_key`)."""
    labels = normalize(name).split(".")
    return [".".join(labels[i:]) for i in range(len(labels) + 1)]


def index_key(text: str) -> str:
    """The label suffix every name a selector matches ends with: a ``matchName`` itself; for a
    pattern, the labels after the last one holding a ``*`` (``*.svc.example.com`` → ``svc.example.com``,
    ``*`` → ``""``). A name's candidates are the selectors under its :func:`name_suffixes`."""
    star = text.rfind("*")
    if star < 0:
        return text
    rest = text[star + 1 :]
    return rest[1:] if rest.startswith(".") else rest.partition(".")[2]


class _Addresses:
    """Learned addresses sorted by value per family, to find those inside a prefix by range."""

    def __init__(self) -> None:
        self._sorted: dict[int, list[int]] = {4: [], 6: []}
        self._text: dict[tuple[int, int], str] = {}

    def add(self, ip: str) -> None:
        address = address_of(ip)
        key = (address.version, int(address))
        if key not in self._text:
            self._text[key] = ip
            bisect.insort(self._sorted[address.version], int(address))

    def discard(self, ip: str) -> None:
        address = address_of(ip)
        if self._text.pop((address.version, int(address)), None) is not None:
            values = self._sorted[address.version]
            del values[bisect.bisect_left(values, int(address))]

    def within(self, prefix: Network) -> list[str]:
        values = self._sorted[prefix.version]
        lo = bisect.bisect_left(values, int(prefix.network_address))
        hi = bisect.bisect_right(values, int(prefix.broadcast_address))
        return [self._text[(prefix.version, v)] for v in values[lo:hi]]


class _IPCache:
    """The ipcache in layers; a prefix's identity is that of its highest layer: endpoint, node,
    learned (DNS), policy CIDR, world — the order in which the from-scratch resolver overwrites."""

    LAYERS = ("endpoint", "node", "learned", "cidr")

    def __init__(self) -> None:
        self.layers: dict[str, dict[str, int]] = {name: {} for name in self.LAYERS}
        self.effective: dict[str, int] = dict(WORLD)
        self.changes: dict[str, int | None] = {}

    def set(self, layer: str, prefix: str, identity: int | None) -> None:
        entries = self.layers[layer]
        if identity is None:
            if entries.pop(prefix, None) is None:
                return
        elif entries.get(prefix) == identity:
            return
        else:
            entries[prefix] = identity
        self._settle(prefix)

    def _settle(self, prefix: str) -> None:
        now: int | None = None
        for name in self.LAYERS:
            now = self.layers[name].get(prefix)
            if now is not None:
                break
        if now is None:
            now = WORLD.get(prefix)
        if self.effective.get(prefix) == now:
            return
        if now is None:
            del self.effective[prefix]
        else:
            self.effective[prefix] = now
        self.changes[prefix] = now


class Engine:
    """One node's resolved policy, kept up to date incrementally (see the module docstring).

    ``node``: the local node (its addresses are ``host``; only its endpoints and those without a
    node are resolved); ``None`` resolves every endpoint.
    """

    def __init__(self, allocator: IdentityAllocator, node: str | None = None) -> None:
        self.allocator = allocator
        self.node = node
        self._selectors = SelectorCache(allocator)
        # policies and what they name
        self._policies: dict[str, Policy] = {}
        self._last_policies: Iterable[Policy] | None = None  # the last set_policies argument
        self._last_topology: Topology | None = None
        self._by_namespace: dict[str | None, set[str]] = {}
        self._named_prefixes: dict[str, frozenset[Network]] = {}
        self._named_services: dict[str, frozenset[ServiceSelector]] = {}
        self._named_fqdns: dict[str, tuple[FQDNSelector, ...]] = {}
        self._prefix_count: Counter[Network] = Counter()
        self._service_count: Counter[ServiceSelector] = Counter()
        self._fqdn_count: Counter[str] = Counter()
        self._fqdns: dict[str, FQDNSelector] = {}
        # topology
        self._endpoints: dict[str, Endpoint] = {}
        self._nodes: tuple[Node, ...] = ()
        self._services: tuple[Service, ...] = ()
        self._targets: dict[ServiceSelector, tuple[Selector, ...]] = {}
        self._service_prefixes: frozenset[Network] = frozenset()
        self._named_count: Counter[tuple[int, tuple[tuple[str, int], ...]]] = Counter()
        self._named: NamedPorts | None = ()
        # prefixes of policy CIDRs and selector-less Service backends (CIDR identities)
        self._prefixes: set[Network] = set()
        self._lengths: dict[int, list[int]] = {4: [], 6: []}  # prefix lengths present, longest first
        # local endpoints
        self._contributions: dict[str, dict[str, Contribution]] = {}
        self._uses: dict[str, set[Selector]] = {}
        self._resolved: dict[str, ResolvedEndpoint] = {}
        self._named_users: set[str] = set()
        self._service_users: set[str] = set()
        self._dirty: set[str] = set()
        self._changed: set[str] = set()
        # learned FQDN addresses
        self._learned: dict[str, frozenset[str]] = {}  # ip → names
        self._name_ips: dict[str, set[str]] = {}
        self._name_selectors: dict[str, frozenset[str]] = {}
        self._names_by_suffix: dict[str, set[str]] = {}  # label suffix → learned names ending so
        self._fqdn_index: dict[str, dict[str, FQDNSelector]] = {}  # index_key → selectors by text
        self._addresses = _Addresses()
        self._pending_keys: set[str] = set()  # index keys of FQDN selectors added or removed
        self._pending_prefixes: set[Network] = set()  # CIDR prefixes added or removed
        self._pending_ips: set[str] = set()  # learned addresses whose identity is to be computed
        self._prefix_keys: dict[tuple[int, int, int], Network] = {}  # (version, bits, length) → prefix
        self._fqdn_ids: dict[tuple[frozenset[str], Network | None, int], int] = {}
        self._ipcache = _IPCache()
        # the local node's host endpoint (l7.resolve.host): cluster-wide policies' nodeSelector rules
        self._host: Endpoint | None = None
        self._host_contributions: dict[str, Contribution] = {}
        self._host_resolved: ResolvedEndpoint | None = None

    # ------------------------------------------------------------------------------------- reading
    @property
    def policies(self) -> Mapping[str, Policy]:
        return self._policies

    @property
    def ipcache(self) -> Mapping[str, int]:
        """prefix → identity (what the datapath's ipcache must hold)."""
        return self._ipcache.effective

    @property
    def learned(self) -> Mapping[str, frozenset[str]]:
        return self._learned

    def resolved(self, key: str) -> ResolvedEndpoint | None:
        return self._resolved.get(key)

    @property
    def host(self) -> ResolvedEndpoint | None:
        """The host endpoint's resolution (None without a local node in the topology). Its key is in
        :attr:`Changes.endpoints` when it changed (:func:`l7.resolve.host.is_host_key`)."""
        self._settle()
        return self._host_resolved

    @property
    def endpoints(self) -> Mapping[str, ResolvedEndpoint]:
        """The local endpoints' resolutions, by key (kept current: read after a change)."""
        self._settle()
        return self._resolved

    def is_managed(self, ip: str) -> bool:
        """Whether ``ip`` is a cluster-managed address (an endpoint's or a node's): a DNS answer never
        changes its identity."""
        prefix = host_prefix(ip)
        return prefix in self._ipcache.layers["endpoint"] or prefix in self._ipcache.layers["node"]

    def fqdn_selectors(self) -> tuple[FQDNSelector, ...]:
        """Every toFQDNs selector of the policies, by text."""
        return tuple(self._fqdns[k] for k in sorted(self._fqdns))

    def name_selectors(self, name: str) -> frozenset[str]:
        """The texts of the toFQDNs selectors that match ``name`` (computed once per name)."""
        found = self._name_selectors.get(name)
        if found is None:
            found = frozenset(
                text
                for suffix in name_suffixes(name)
                for text, sel in self._fqdn_index.get(suffix, {}).items()
                if sel.matches_name(name)
            )
            if name in self._name_ips:  # cache only learned names (kept current by _flush_learned)
                self._name_selectors[name] = found
        return found

    def fqdn_identity(self, ip: str, names: Iterable[str]) -> int:
        """The identity of ``ip`` learned for ``names``: the set of FQDN selectors matching any of the
        names, with the most specific policy CIDR containing the address (the from-scratch resolver's
        rule); allocated when new. Memoised per (selector set, prefix, family): identities are never
        withdrawn, so a set's identity stays what it was."""
        chosen: set[str] = set()
        for name in names:
            chosen |= self.name_selectors(name)
        address = address_of(ip)
        best = self._best_prefix(address)
        key = (frozenset(chosen), best, address.version)
        found = self._fqdn_ids.get(key)
        if found is None:
            found = self.allocator.fqdn_identity(chosen, address, () if best is None else (best,)).id
            self._fqdn_ids[key] = found
        return found

    def snapshot(self) -> ResolvedNode:
        """The whole resolved node (linear in the node's state)."""
        self._settle()
        resolved = [self._resolved[k] for k in sorted(self._resolved)]
        return ResolvedNode(
            node=self.node,
            endpoints=tuple(resolved),
            identities=self.allocator.snapshot(),
            ipcache=tuple(IPCacheEntry(p, i) for p, i in sorted(self._ipcache.effective.items())),
            fqdn_selectors=fqdn_uses(resolved),
            http_rule_sets=rule_sets(resolved, "http"),
            dns_rule_sets=rule_sets(resolved, "dns"),
            host=self._host_resolved,
        )

    def take_changes(self) -> Changes:
        self._settle()
        out = Changes(frozenset(self._changed), self._ipcache.changes)
        self._changed = set()
        self._ipcache.changes = {}
        return out

    # ------------------------------------------------------------------------------------- policies
    def set_policies(self, policies: Iterable[Policy]) -> None:
        """Make the policy set ``policies`` (by key): only added, removed or changed ones cost."""
        if policies is self._last_policies:
            return
        wanted = {p.key: p for p in policies}
        for key in [k for k in self._policies if k not in wanted]:
            self.remove_policy(key)
        for policy in wanted.values():
            self.upsert_policy(policy)
        self._last_policies = policies

    def upsert_policy(self, policy: Policy) -> None:
        self._last_policies = None
        old = self._policies.get(policy.key)
        if old is policy or (old is not None and old == policy):
            return
        self._policies[policy.key] = policy
        self._policy_changed(policy.key, old, policy)

    def remove_policy(self, key: str) -> None:
        self._last_policies = None
        old = self._policies.pop(key, None)
        if old is not None:
            self._policy_changed(key, old, None)

    def _policy_changed(self, key: str, old: Policy | None, new: Policy | None) -> None:
        for p in (old, new):
            if p is not None:
                self._by_namespace.setdefault(p.namespace, set()).discard(key)
        if new is not None:
            self._by_namespace[new.namespace].add(key)
        self._named_things(key, new)
        namespaces = {p.namespace for p in (old, new) if p is not None}
        for ep_key, ep in self._local_endpoints(namespaces):
            contributions = self._contributions[ep_key]
            had = contributions.pop(key, None)
            if new is not None:
                c = contribute(new, ep.labels, ep.ports)
                if c.selects:
                    contributions[key] = c
            if had is not None or key in contributions:
                self._dirty.add(ep_key)
        if None in namespaces:
            self._host_policy_changed(key, new)

    def _host_policy_changed(self, key: str, new: Policy | None) -> None:
        """A cluster-wide policy changed: its nodeSelector rules' contribution to the host endpoint."""
        if self._host is None:
            return
        had = self._host_contributions.pop(key, None)
        if new is not None:
            c = contribute(new, self._host.labels, self._host.ports, host=True)
            if c.selects:
                self._host_contributions[key] = c
        if had is not None or key in self._host_contributions:
            self._dirty.add(self._host.key)

    def _set_host(self, host: Endpoint | None) -> None:
        """The local node's host endpoint appeared, changed (labels, addresses) or went away."""
        if host == self._host:
            return
        if self._host is not None:
            self._dirty.add(self._host.key)
        self._host, self._host_contributions = host, {}
        if host is None:
            return
        for key in self._by_namespace.get(None, ()):
            c = contribute(self._policies[key], host.labels, host.ports, host=True)
            if c.selects:
                self._host_contributions[key] = c
        self._dirty.add(host.key)

    def _local_endpoints(self, namespaces: set[str | None]) -> list[tuple[str, Endpoint]]:
        if None in namespaces:
            return [(k, self._endpoints[k]) for k in self._contributions]
        return [
            (k, self._endpoints[k]) for k in self._contributions if self._endpoints[k].namespace in namespaces
        ]

    def _named_things(self, key: str, new: Policy | None) -> None:
        """CIDR prefixes, toServices and toFQDNs selectors the policy names (reference-counted)."""
        prefixes = frozenset(policy_prefixes([new])) if new is not None else frozenset()
        services = frozenset(service_selectors([new])) if new is not None else frozenset()
        fqdns = fqdn_selectors([new]) if new is not None else ()
        old_prefixes = self._named_prefixes.pop(key, frozenset())
        old_services = self._named_services.pop(key, frozenset())
        old_fqdns = self._named_fqdns.pop(key, ())
        if new is not None:
            self._named_prefixes[key], self._named_services[key], self._named_fqdns[key] = (
                prefixes,
                services,
                fqdns,
            )
        if prefixes != old_prefixes:
            self._prefix_count.update(prefixes)
            self._prefix_count.subtract(old_prefixes)
            self._prefixes_changed()
        if services != old_services:
            self._service_count.update(services)
            self._service_count.subtract(old_services)
            self._services_changed(services ^ old_services)
        if fqdns != old_fqdns:
            added: list[FQDNSelector] = []
            for sel in fqdns:
                self._fqdn_count[sel.text] += 1
                if self._fqdn_count[sel.text] == 1:
                    self._fqdns[sel.text] = sel
                    added.append(sel)
            removed: list[str] = []
            for sel in old_fqdns:
                self._fqdn_count[sel.text] -= 1
                if self._fqdn_count[sel.text] <= 0:
                    del self._fqdn_count[sel.text]
                    del self._fqdns[sel.text]
                    removed.append(sel.text)
            self._fqdns_changed(added, removed)

    # ------------------------------------------------------------------------------------- topology
    def set_topology(self, topology: Topology) -> None:
        """Make the endpoints, nodes and services those of ``topology`` (diffed by key)."""
        if topology is self._last_topology:
            return
        wanted = {e.key: e for e in topology.endpoints}
        for key in [k for k in self._endpoints if k not in wanted]:
            self.remove_endpoint(key)
        for ep in topology.endpoints:
            self.upsert_endpoint(ep)
        if topology.nodes != self._nodes:
            self.set_nodes(topology.nodes)
        if topology.services != self._services:
            self.set_services(topology.services)
        self._last_topology = topology

    def _is_local(self, ep: Endpoint) -> bool:
        return self.node is None or ep.node in (None, self.node)

    def upsert_endpoint(self, ep: Endpoint) -> None:
        self._last_topology = None
        old = self._endpoints.get(ep.key)
        if old is ep or (old is not None and old == ep):
            return
        if old is not None:
            self._drop_endpoint(old)
        self._endpoints[ep.key] = ep
        for ip in ep.ips:
            self._ipcache.set("endpoint", host_prefix(ip), ep.identity)
        if ep.ports:
            self._named_count[(ep.identity, ep.ports)] += 1
            if self._named_count[(ep.identity, ep.ports)] == 1:
                self._named_changed()
        if self._is_local(ep):
            contributions: dict[str, Contribution] = {}
            for key in (*self._by_namespace.get(ep.namespace, ()), *self._by_namespace.get(None, ())):
                c = contribute(self._policies[key], ep.labels, ep.ports)
                if c.selects:
                    contributions[key] = c
            self._contributions[ep.key] = contributions
            self._dirty.add(ep.key)

    def remove_endpoint(self, key: str) -> None:
        self._last_topology = None
        old = self._endpoints.pop(key, None)
        if old is not None:
            self._drop_endpoint(old)

    def _drop_endpoint(self, old: Endpoint) -> None:
        for ip in old.ips:
            self._ipcache.set("endpoint", host_prefix(ip), None)
        if old.ports:
            self._named_count[(old.identity, old.ports)] -= 1
            if self._named_count[(old.identity, old.ports)] <= 0:
                del self._named_count[(old.identity, old.ports)]
                self._named_changed()
        if self._contributions.pop(old.key, None) is not None:
            self._dirty.add(old.key)

    def set_nodes(self, nodes: Sequence[Node]) -> None:
        self._last_topology = None
        wanted: dict[str, int] = {}
        for node in nodes:
            local = self.node is not None and node.name == self.node
            identity = int(ReservedIdentity.HOST) if local else node.identity
            for ip in node.ips:
                wanted[host_prefix(ip)] = identity
        for prefix in [p for p in self._ipcache.layers["node"] if p not in wanted]:
            self._ipcache.set("node", prefix, None)
        for prefix, identity in wanted.items():
            self._ipcache.set("node", prefix, identity)
        self._nodes = tuple(nodes)
        self._set_host(host_endpoint(nodes, self.node))

    def set_services(self, services: Sequence[Service]) -> None:
        self._last_topology = None
        self._services = tuple(services)
        self._services_changed(set(self._targets))

    def _services_changed(self, selectors: Iterable[ServiceSelector]) -> None:
        for sel in selectors:
            self._targets.pop(sel, None)
        backends: set[Network] = set()
        for sel, count in self._service_count.items():
            if count > 0:
                backends.update(t.prefix for t in self._service_targets(sel) if isinstance(t, CIDRSelector))
        self._service_prefixes = frozenset(backends)
        self._prefixes_changed()
        self._dirty |= self._service_users

    def _service_targets(self, sel: ServiceSelector) -> tuple[Selector, ...]:
        found = self._targets.get(sel)
        if found is None:
            found = service_targets(sel, self._services)
            self._targets[sel] = found
        return found

    def _named_changed(self) -> None:
        self._named = None
        self._dirty |= self._named_users

    def _named_ports(self) -> NamedPorts:
        if self._named is None:
            self._named = tuple(sorted(self._named_count))
        return self._named

    # ------------------------------------------------------------------------------ CIDR prefixes
    def _prefixes_changed(self) -> None:
        wanted = {p for p, n in self._prefix_count.items() if n > 0} | self._service_prefixes
        added, removed = wanted - self._prefixes, self._prefixes - wanted
        if not added and not removed:
            return
        for prefix in sorted(added, key=str):
            self._ipcache.set("cidr", str(prefix), self.allocator.cidr_identity(prefix).id)
        for prefix in removed:
            self._ipcache.set("cidr", str(prefix), None)
        self._prefixes = wanted
        self._prefix_keys = {_prefix_key(p): p for p in wanted}
        for version in (4, 6):
            lengths = {p.prefixlen for p in wanted if p.version == version}
            self._lengths[version] = sorted(lengths, reverse=True)
        self._pending_prefixes |= added | removed  # learned IPs inside them: see _flush_learned

    def _best_prefix(self, address: Address) -> Network | None:
        value, bits = int(address), address.max_prefixlen
        for length in self._lengths[address.version]:
            found = self._prefix_keys.get((address.version, value >> (bits - length), length))
            if found is not None:
                return found
        return None

    # ----------------------------------------------------------------------------- learned names
    def set_learned(self, learned: Mapping[str, Iterable[str]]) -> None:
        for ip in [ip for ip in self._learned if ip not in learned]:
            self.forget(ip)
        for ip, names in learned.items():
            self.learn(ip, names)

    def learn(self, ip: str, names: Iterable[str]) -> None:
        """``ip`` was learned for ``names`` (all of them: replaces what it was learned for before).
        Its identity and ipcache entry are in the next :meth:`take_changes` (computed in batches)."""
        wanted = frozenset(names)
        old = self._learned.get(ip)
        if old != wanted:
            for name in (old or frozenset()) - wanted:
                self._unname(ip, name)
            for name in wanted - (old or frozenset()):
                ips = self._name_ips.get(name)
                if ips is None:
                    ips = self._name_ips[name] = set()
                    for suffix in name_suffixes(name):
                        self._names_by_suffix.setdefault(suffix, set()).add(name)
                ips.add(ip)
            if old is None:
                self._addresses.add(ip)
            self._learned[ip] = wanted
        self._pending_ips.add(ip)

    def forget(self, ip: str) -> None:
        names = self._learned.pop(ip, None)
        if names is None:
            return
        for name in names:
            self._unname(ip, name)
        self._addresses.discard(ip)
        self._pending_ips.discard(ip)
        self._ipcache.set("learned", host_prefix(ip), None)

    def _unname(self, ip: str, name: str) -> None:
        ips = self._name_ips.get(name)
        if ips is None:
            return
        ips.discard(ip)
        if not ips:
            del self._name_ips[name]
            self._name_selectors.pop(name, None)
            for suffix in name_suffixes(name):
                bucket = self._names_by_suffix.get(suffix)
                if bucket is not None:
                    bucket.discard(name)
                    if not bucket:
                        del self._names_by_suffix[suffix]

    def _relearn(self, ip: str) -> int:
        identity = self.fqdn_identity(ip, self._learned[ip])
        self._ipcache.set("learned", host_prefix(ip), identity)
        return identity

    def _fqdns_changed(self, added: list[FQDNSelector], removed: list[str]) -> None:
        for sel in added:
            self._fqdn_index.setdefault(index_key(sel.text), {})[sel.text] = sel
            self._pending_keys.add(index_key(sel.text))
        for text in removed:
            key = index_key(text)
            bucket = self._fqdn_index.get(key)
            if bucket is not None:
                bucket.pop(text, None)
                if not bucket:
                    del self._fqdn_index[key]
            self._pending_keys.add(key)

    def _flush_learned(self) -> None:
        """Re-credit the learned IPs that changed FQDN selectors or CIDR prefixes affect: the names
        under the changed selectors' index keys, the addresses inside the changed prefixes (found by
        range in the sorted addresses) — once per batch of changes, never per change × address."""
        if not self._pending_keys and not self._pending_prefixes and not self._pending_ips:
            return
        ips, self._pending_ips = self._pending_ips, set()
        keys, self._pending_keys = self._pending_keys, set()
        for key in keys:
            for name in list(self._names_by_suffix.get(key, ())):
                self._name_selectors.pop(name, None)
                ips |= self._name_ips.get(name, set())
        prefixes, self._pending_prefixes = self._pending_prefixes, set()
        for prefix in prefixes:
            ips.update(self._addresses.within(prefix))
        for ip in sorted(ips):
            if ip in self._learned:
                self._relearn(ip)

    # ------------------------------------------------------------------------------- resolution
    def _settle(self) -> None:
        self._flush_learned()
        while True:
            self._dirty |= self._selectors.take_changed()
            if not self._dirty:
                return
            dirty, self._dirty = self._dirty, set()
            for key in dirty:
                self._resolve(key)

    def _resolve(self, key: str) -> None:
        uses: set[Selector] = set()
        if is_host_key(key):
            old = self._host_resolved
            host = self._host if self._host is not None and self._host.key == key else None
            new = None if host is None else self._resolve_endpoint(host, self._host_contributions, uses)
            self._host_resolved = new  # one host key per engine: the local node's
        else:
            old = self._resolved.get(key)
            contributions = self._contributions.get(key)
            if contributions is None:  # no longer a local endpoint
                self._resolved.pop(key, None)
                new = None
            else:
                new = self._resolve_endpoint(self._endpoints[key], contributions, uses)
                self._resolved[key] = new
        for sel in self._uses.pop(key, set()) - uses:
            self._selectors.remove_user(sel, key)
        if uses:
            self._uses[key] = uses
        if new != old:
            self._changed.add(key)

    def _resolve_endpoint(
        self, endpoint: Endpoint, contributions: Mapping[str, Contribution], uses: set[Selector]
    ) -> ResolvedEndpoint:
        key = endpoint.key
        parts = [contributions[k] for k in sorted(contributions)]
        self._named_users.discard(key)
        self._service_users.discard(key)

        def direction(pick: str) -> DirectionPolicy:
            found: list[tuple[str, DirectionContribution]] = [(c.policy, getattr(c, pick)) for c in parts]
            found = [(k, d) for k, d in found if d.enabled]
            return DirectionPolicy(
                enforced=any(d.default_deny for _, d in found),
                selected_by=tuple(k for k, _ in found),
                allows=tuple(e for _, d in found for s in d.allows for e in self._entries(key, s, uses)),
                denies=tuple(e for _, d in found for s in d.denies for e in self._entries(key, s, uses)),
            )

        return ResolvedEndpoint(endpoint, direction("ingress"), direction("egress"))

    def _entries(self, key: str, s: SelectorEntry, uses: set[Selector]) -> tuple[Entry, ...]:
        chosen = self._select(key, s.selector, uses)
        if s.named_port is None:
            return (Entry(s.selector, chosen, s.protocol, s.lo, s.hi, s.origin, s.l7),)
        self._named_users.add(key)
        return named_port_entries(s, chosen, self._named_ports())

    def _select(self, key: str, selector: Selector, uses: set[Selector]) -> frozenset[int] | None:
        if not isinstance(selector, ServiceSelector):
            uses.add(selector)
            return self._selectors.add_user(selector, key)
        self._service_users.add(key)
        chosen: set[int] = set()
        for target in self._service_targets(selector):
            uses.add(target)
            chosen |= self._selectors.add_user(target, key) or frozenset()
        return frozenset(chosen)
