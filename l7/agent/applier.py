"""The node's desired datapath state, kept in step with the engine one change at a time.

::

    Engine.take_changes() ──► endpoints whose resolution changed ─┐  + endpoints whose interface or
                         └──► ipcache prefixes that changed ──────┤    audit flag changed
                                                                  ▼
                        per touched endpoint: plan.endpoint_plan / endpoint_unions (pure)
                                                                  ▼
                        Delta: endpoint entries, policy entries, ipcache entries to write or delete

The node's host endpoint (host policies, ``l7.resolve.host``) rides along: when the engine says it
changed, :func:`~l7.plan.host_plan` gives its entry (id ``HOST_ENDPOINT_ID``, no device) and policy,
and the node's addresses carry its id in the ipcache (so the datapath applies the host's ingress
policy to packets for the node).

The first step after start is a full :class:`~l7.plan.DesiredState` (``sync`` adopts the pinned
maps of an earlier agent, writing only what differs); every later step is a :class:`Delta` whose size
is that of the change. Proxy ports come from :class:`~l7.plan.ProxyPorts` (stable per union key).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from bpf.policy_entries import PolicyDecision
from l7.plan import (
    DesiredState,
    EndpointState,
    IpcacheState,
    IPNetwork,
    ProxyPorts,
    endpoint_plan,
    endpoint_unions,
    host_plan,
)
from l7.resolve.engine import Engine, network
from l7.resolve.host import is_host_key
from l7.resolve.types import L7RuleSet, ResolvedEndpoint

Unions = dict[str, tuple[L7RuleSet, ...]]


@dataclass
class Delta:
    """What one step writes: set (new or changed) and gone (to delete), by map."""

    endpoints: dict[int, EndpointState] = field(default_factory=dict)
    endpoints_gone: set[int] = field(default_factory=set)
    policy: dict[int, tuple[PolicyDecision, ...]] = field(default_factory=dict)
    ipcache: dict[IPNetwork, IpcacheState] = field(default_factory=dict)
    ipcache_gone: set[IPNetwork] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)  # endpoint keys whose entries were recomputed
    unions_changed: bool = False
    endpoints_changed: bool = False  # a local endpoint appeared, went, or changed addresses or audit

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.endpoints_gone or self.policy or self.ipcache or self.ipcache_gone)


class Applier:
    """See the module docstring. Not thread-safe: the agent calls it under its lock."""

    def __init__(self, engine: Engine, ports: ProxyPorts) -> None:
        self.engine = engine
        self.ports = ports
        self.state: dict[str, EndpointState] = {}  # local endpoints with an interface, by key
        self.policy: dict[str, tuple[PolicyDecision, ...]] = {}
        self.ep_unions: dict[str, Unions] = {}
        self.unions: Unions = {}
        self.ifindexes: dict[str, int] = {}
        self.audited: frozenset[str] = frozenset()
        self.by_ip: dict[IPNetwork, int] = {}  # local endpoint IP → endpoint id
        self.seen: dict[str, tuple[tuple[str, ...], bool]] = {}  # local endpoint → (IPs, audit)
        self.ports_assigned = False  # a new proxy port was assigned in the last step
        self.host: EndpointState | None = None  # the host endpoint's entry, when the node is known
        self.host_policy: tuple[PolicyDecision, ...] = ()
        self._ifindexes_in: Mapping[str, int] | None = None  # the last step's arguments, by identity
        self._audited_in: AbstractSet[str] | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(sorted(k for k in self.engine.endpoints if k not in self.ifindexes))

    def local(self) -> tuple[ResolvedEndpoint, ...]:
        endpoints = self.engine.endpoints
        return tuple(endpoints[k] for k in sorted(endpoints))

    # ------------------------------------------------------------------------------------------ steps
    def full(self, ifindexes: Mapping[str, int], audited: AbstractSet[str]) -> DesiredState:
        """Everything, from scratch (the first sync after start: it adopts what the maps hold)."""
        self.ports_assigned = False
        self.engine.take_changes()
        self.state, self.policy, self.ep_unions, self.by_ip, self.seen = {}, {}, {}, {}, {}
        self.host, self.host_policy = None, ()
        self.ifindexes = {k: i for k, i in ifindexes.items() if k in self.engine.endpoints}
        self.audited = frozenset(audited)
        for key in self.engine.endpoints:
            self._unions_of(key)
        self._merge_unions()
        for key, r in self.engine.endpoints.items():  # the ports now exist for every union
            self._endpoint(key, Delta())
            self.seen[key] = (r.endpoint.ips, key in self.audited)
        self._host(Delta())
        ipcache: dict[IPNetwork, IpcacheState] = {}
        for prefix, identity in self.engine.ipcache.items():
            net = network(prefix)
            ipcache[net] = IpcacheState(identity, self.by_ip.get(net, 0))
        endpoints = {s.endpoint_id: s for s in self.state.values()}
        policy = {self.state[k].endpoint_id: self.policy[k] for k in self.state}
        if self.host is not None:
            endpoints[self.host.endpoint_id] = self.host
            policy[self.host.endpoint_id] = self.host_policy
        return DesiredState(endpoints=endpoints, ipcache=ipcache, policy=policy, missing=self.missing)

    def step(self, ifindexes: Mapping[str, int], audited: AbstractSet[str]) -> Delta:
        """The difference since the last step."""
        self.ports_assigned = False
        changes = self.engine.take_changes()
        endpoints = self.engine.endpoints
        delta = Delta()
        touched = set(changes.endpoints)
        if ifindexes is not self._ifindexes_in or audited is not self._audited_in or changes.endpoints:
            for key in endpoints.keys() | self.ifindexes.keys():
                if ifindexes.get(key) != self.ifindexes.get(key) or (key in audited) != (key in self.audited):
                    touched.add(key)
            self.ifindexes = {k: i for k, i in ifindexes.items() if k in endpoints}
            self.audited = frozenset(audited)
            self._ifindexes_in, self._audited_in = ifindexes, audited
        prefixes: set[str] = set(changes.ipcache)
        if any(is_host_key(k) for k in touched):
            touched = {k for k in touched if not is_host_key(k)}
            prefixes |= self._host(delta)
        unions_before = {k: self.ep_unions.get(k) for k in touched}
        for key in touched:
            self._unions_of(key)
        if any(self.ep_unions.get(k) != unions_before[k] for k in touched):
            delta.unions_changed = self._merge_unions()
        for key in touched:
            prefixes |= self._endpoint(key, delta)
            r = endpoints.get(key)
            seen = None if r is None else (r.endpoint.ips, key in self.audited)
            if seen != self.seen.get(key):
                delta.endpoints_changed = True
                if seen is None:
                    self.seen.pop(key, None)
                else:
                    self.seen[key] = seen
        delta.touched = touched
        for prefix in prefixes:
            net = network(prefix)
            identity = self.engine.ipcache.get(prefix)
            if identity is None:
                delta.ipcache_gone.add(net)
            else:
                delta.ipcache[net] = IpcacheState(identity, self.by_ip.get(net, 0))
        return delta

    # -------------------------------------------------------------------------------------- helpers
    def _unions_of(self, key: str) -> None:
        r = self.engine.endpoints.get(key)
        if r is None:
            self.ep_unions.pop(key, None)
        else:
            self.ep_unions[key] = endpoint_unions(r, key in self.audited)

    def _merge_unions(self) -> bool:
        merged: Unions = {}
        for unions in self.ep_unions.values():
            for key, members in unions.items():
                merged.setdefault(key, members)
        merged = dict(sorted(merged.items()))
        changed = merged != self.unions
        self.unions = merged
        self.ports_assigned = self.ports.assign(merged) or self.ports_assigned
        return changed

    def _endpoint(self, key: str, delta: Delta) -> set[str]:
        """Recompute one endpoint's entries into ``delta``; returns the ipcache prefixes to rewrite
        (its addresses, when its endpoint id changed)."""
        r = self.engine.endpoints.get(key)
        if r is not None and key not in self.ep_unions:
            self._unions_of(key)
        old = self.state.get(key)
        ifindex = self.ifindexes.get(key)
        prefixes: set[str] = set()
        if r is None or ifindex is None:
            if old is not None:
                delta.endpoints_gone.add(old.endpoint_id)
                del self.state[key]
                self.policy.pop(key, None)
                prefixes |= self._addresses(old.endpoint_id, None)
            return prefixes
        state, decisions = endpoint_plan(r, ifindex, self.ports.ports, key in self.audited)
        if old is not None and old.endpoint_id != state.endpoint_id:
            delta.endpoints_gone.add(old.endpoint_id)
            prefixes |= self._addresses(old.endpoint_id, None)
        if old != state:
            delta.endpoints[state.endpoint_id] = state
        if old is None or old.endpoint_id != state.endpoint_id or self.policy.get(key) != decisions:
            delta.policy[state.endpoint_id] = decisions
        self.state[key] = state
        self.policy[key] = decisions
        return prefixes | self._own_addresses(state.endpoint_id, r.endpoint.ips)

    def _host(self, delta: Delta) -> set[str]:
        """Recompute the host endpoint's entries into ``delta``; returns the ipcache prefixes to rewrite
        (the node's addresses that gained or lost the host endpoint's id)."""
        r = self.engine.host
        old = self.host
        planned = host_plan(r)
        if r is None or planned is None:
            if old is not None:
                delta.endpoints_gone.add(old.endpoint_id)
                self.host, self.host_policy = None, ()
                return self._addresses(old.endpoint_id, None)
            return set()
        state, decisions = planned
        if old != state:
            delta.endpoints[state.endpoint_id] = state
        if old is None or decisions != self.host_policy:
            delta.policy[state.endpoint_id] = decisions
        self.host, self.host_policy = state, decisions
        return self._own_addresses(state.endpoint_id, r.endpoint.ips)

    def _own_addresses(self, endpoint_id: int, ips: tuple[str, ...]) -> set[str]:
        """Make ``ips`` (and only them) the addresses of ``endpoint_id``; returns the prefixes whose
        endpoint id changed."""
        wanted = {ipaddress.ip_network(ip) for ip in ips}
        prefixes = self._addresses(endpoint_id, wanted)
        for net in wanted:
            if self.by_ip.get(net) != endpoint_id:
                self.by_ip[net] = endpoint_id
                prefixes.add(str(net))
        return prefixes

    def _addresses(self, endpoint_id: int, keep: set[IPNetwork] | None) -> set[str]:
        """Forget the addresses of ``endpoint_id`` (except ``keep``); returns their prefixes."""
        out: set[str] = set()
        for net in [n for n, i in self.by_ip.items() if i == endpoint_id and (keep is None or n not in keep)]:
            del self.by_ip[net]
            out.add(str(net))
        return out
