"""The parts a node agent runs beside the datapath: Envoy with its xDS server, the DNS proxy, the flow
log, the metrics endpoint. Each is a :class:`NodeService`; the agent drives them all the same way::

    start(host) ─► [ prepare(view) ─► datapath sync ─► commit(view) ]* ─► close()

``prepare`` runs *before* the datapath redirects to a new proxy port (so the listener exists when the
first packet is steered to it: a redirect without a socket fails closed); ``commit`` runs after, when
nothing points at ports that went out of use any more. Both run under :attr:`ServiceHost.lock`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from l7.agent.sync import DatapathLike
from l7.endpoints import EndpointsFile
from l7.identity import IdentityAllocator
from l7.plan import AUDIT_PREFIX
from l7.resolve.engine import Engine
from l7.resolve.types import L7RuleSet, ResolvedEndpoint
from l7.selectors import FQDNSelector

Learned = Mapping[str, Iterable[str]]
"""IP → the DNS names it was learned for (what :meth:`l7.resolve.engine.Engine.set_learned` takes)."""


@dataclass(frozen=True)
class AppliedView:
    """What one application of the policy produced, as the services see it."""

    generation: int
    local: tuple[ResolvedEndpoint, ...]  # the node's endpoints, resolved (by key)
    endpoints: EndpointsFile
    unions: Mapping[str, tuple[L7RuleSet, ...]]  # union key → member rule sets (see plan.l7_unions)
    ports: Mapping[str, int]  # union key → proxy port (every key of ``unions`` has one)

    def fqdn_selectors(self) -> dict[str, FQDNSelector]:
        """The toFQDNs selectors the local endpoints' policy entries use, by text."""
        out: dict[str, FQDNSelector] = {}
        for r in self.local:
            for entry in (*r.egress.allows, *r.egress.denies):
                if isinstance(entry.selector, FQDNSelector):
                    out.setdefault(entry.selector.text, entry.selector)
        return out

    def ports_of(self, kind: str) -> dict[int, tuple[L7RuleSet, ...]]:
        """Proxy port → member rule sets, for the unions of ``kind`` ("http" or "dns")."""
        return {
            self.ports[key]: members
            for key, members in self.unions.items()
            if members and members[0].kind == kind
        }

    def audit_ports(self) -> frozenset[int]:
        """The proxy ports of audit-mode unions: what their rules would deny is let through and
        reported with verdict ``audit`` (see :func:`l7.plan.audit_key`)."""
        return frozenset(port for key, port in self.ports.items() if key.startswith(AUDIT_PREFIX))


class ServiceHost(Protocol):
    """The agent as the services see it."""

    @property
    def node(self) -> str: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def lock(self) -> threading.RLock: ...
    @property
    def datapath(self) -> DatapathLike: ...
    @property
    def allocator(self) -> IdentityAllocator: ...
    @property
    def engine(self) -> Engine:
        """The node's resolution (read under :attr:`lock`)."""

    def learn(self, learned: Mapping[str, Iterable[str] | None], reason: str) -> bool:
        """IPs learned from DNS answers (IP → all the names it is now known for; None: forgotten):
        resolved and written to the datapath — the ipcache, and the policy entries of endpoints whose
        rules select a new identity — before this returns (takes the lock). ``True`` when policy
        entries were written (a new identity), not only the ipcache."""

    def reapply(self, reason: str) -> None:
        """Give the services the current view again (e.g. secrets changed) and write what differs."""

    def last_view(self) -> AppliedView | None: ...


class NodeService(Protocol):
    name: str

    def start(self, host: ServiceHost) -> None: ...
    def prepare(self, view: AppliedView) -> None: ...
    def commit(self, view: AppliedView) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
