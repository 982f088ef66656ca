"""Numeric security identities: one per distinct label set, stable across restarts.

* Reserved identities 1–10 (``reserved:<name>``), fixed numbers as in Cilium.
* Endpoint (cluster-scope) identities 256–65535: the preferred number is derived from a hash of the
  sorted labels, with linear probing on collision. The same label set therefore gets the same number in
  every process; a JSON state file (:meth:`IdentityAllocator.save` / :meth:`IdentityAllocator.load`)
  also keeps numbers of colliding sets stable when a restart sees them in another order.
* Local-scope identities (CIDR prefixes and FQDN-selector sets) from ``1 << 24`` up, allocated the same
  way in their own range.
* Remote-node identities (node-selector labels, as Cilium's ``--enable-node-selector-labels``) from
  ``2 << 24`` up — Cilium's ``IdentityScopeRemoteNode`` — allocated the same way. A remote node's labels
  are ``reserved:remote-node`` plus its Node labels with source ``k8s`` (:func:`node_labels`); nodes with
  the same labels share one identity, and a node without labels keeps ``reserved:remote-node`` (6).

CIDR identities carry ``cidr:<prefix>`` plus ``reserved:world`` and ``reserved:world-ipv4``/``-ipv6``;
an IP learned from DNS gets the identity of the *set* of FQDN selectors matching its name
(:func:`fqdn_labels`), plus the most specific policy ``cidr:`` label containing it.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from l7.errors import L7GateError
from l7.labels import CIDR, FQDN, K8S, RESERVED, Label, LabelSet

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ReservedIdentity(enum.IntEnum):
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    KUBE_APISERVER = 7
    INGRESS = 8
    WORLD_IPV4 = 9
    WORLD_IPV6 = 10

    @property
    def label_name(self) -> str:
        return self.name.lower().replace("_", "-")

    @property
    def label(self) -> Label:
        return Label(RESERVED, self.label_name)


CLUSTER_MIN, CLUSTER_MAX = 256, 65535
LOCAL_MIN, LOCAL_MAX = 1 << 24, (1 << 25) - 1
REMOTE_NODE_MIN, REMOTE_NODE_MAX = 2 << 24, (3 << 24) - 1


class IdentityError(L7GateError):
    """An identity range is exhausted or a state file is unusable."""


@dataclass(frozen=True)
class Identity:
    id: int
    labels: LabelSet

    @property
    def reserved(self) -> bool:
        return self.id < CLUSTER_MIN

    @property
    def local(self) -> bool:
        return LOCAL_MIN <= self.id <= LOCAL_MAX

    @property
    def remote_node(self) -> bool:
        """A remote node's own (node-labels) identity, or the reserved ``remote-node`` identity."""
        return self.id == ReservedIdentity.REMOTE_NODE or REMOTE_NODE_MIN <= self.id <= REMOTE_NODE_MAX

    def __str__(self) -> str:
        return f"{self.id} ({self.labels})"


def reserved_identities() -> tuple[Identity, ...]:
    return tuple(Identity(int(r), LabelSet((r.label,))) for r in ReservedIdentity)


def _is_local(labels: LabelSet) -> bool:
    return labels.has_source(CIDR) or labels.has_source(FQDN)


def _range(labels: LabelSet) -> tuple[int, int]:
    if ReservedIdentity.REMOTE_NODE.label in labels:
        return REMOTE_NODE_MIN, REMOTE_NODE_MAX
    if _is_local(labels):
        return LOCAL_MIN, LOCAL_MAX
    return CLUSTER_MIN, CLUSTER_MAX


def _preferred(labels: LabelSet, lo: int, hi: int) -> int:
    digest = hashlib.sha256("\n".join(labels.strings()).encode()).digest()
    return lo + int.from_bytes(digest[:8], "big") % (hi - lo + 1)


def world_labels(family: int) -> tuple[Label, ...]:
    own = ReservedIdentity.WORLD_IPV4 if family == 4 else ReservedIdentity.WORLD_IPV6
    return (ReservedIdentity.WORLD.label, own.label)


def cidr_labels(prefix: Network) -> LabelSet:
    """``{cidr:<prefix>, reserved:world, reserved:world-ipvN}``."""
    return LabelSet((Label(CIDR, str(prefix)), *world_labels(prefix.version)))


def node_labels(labels: Mapping[str, str]) -> LabelSet:
    """The identity labels of a remote node: ``reserved:remote-node`` plus ``k8s:<key>=<value>`` for
    each of its Node labels (without labels: exactly the reserved ``remote-node`` identity)."""
    own = [Label(K8S, key, value) for key, value in labels.items()]
    return LabelSet.of([ReservedIdentity.REMOTE_NODE.label, *own])


def fqdn_labels(selectors: Iterable[str], ip: Address | None, prefixes: Iterable[Network] = ()) -> LabelSet:
    """Labels of an IP learned from DNS: one ``fqdn:<selector>`` per matching selector, ``reserved:world``
    (+ family) and, when a policy CIDR prefix contains ``ip``, the most specific such ``cidr:`` label."""
    out = [Label(FQDN, s) for s in selectors]
    if ip is None:
        out += world_labels(4)
        return LabelSet.of(out)
    out += world_labels(ip.version)
    containing = [p for p in prefixes if p.version == ip.version and ip in p and p.prefixlen > 0]
    if containing:
        out.append(Label(CIDR, str(max(containing, key=lambda p: p.prefixlen))))
    return LabelSet.of(out)


class IdentityAllocator:
    """Label set ↔ numeric identity. Deterministic: a label set's number depends on its labels (and,
    after a collision, on the saved state), never on the process."""

    def __init__(self) -> None:
        self._by_id: dict[int, Identity] = {}
        self._by_labels: dict[LabelSet, Identity] = {}
        self._log: list[Identity] = []  # every identity in allocation order (see :meth:`since`)
        for identity in reserved_identities():
            self._add(identity)

    def _add(self, identity: Identity) -> None:
        self._by_id[identity.id] = identity
        self._by_labels[identity.labels] = identity
        self._log.append(identity)

    def allocate(self, labels: LabelSet) -> Identity:
        """The identity of ``labels``, allocating one if needed."""
        found = self._by_labels.get(labels)
        if found is not None:
            return found
        lo, hi = _range(labels)
        number = _preferred(labels, lo, hi)
        for _ in range(hi - lo + 1):
            if number not in self._by_id:
                identity = Identity(number, labels)
                self._add(identity)
                return identity
            number = lo if number == hi else number + 1
        raise IdentityError(f"identity range {lo}-{hi} is exhausted")

    def cidr_identity(self, prefix: Network) -> Identity:
        """The identity of a policy CIDR prefix; ``/0`` is the world identity of its family."""
        if prefix.prefixlen == 0:
            v4 = prefix.version == 4
            return self.get(ReservedIdentity.WORLD_IPV4 if v4 else ReservedIdentity.WORLD_IPV6)
        return self.allocate(cidr_labels(prefix))

    def fqdn_identity(
        self, selectors: Iterable[str], ip: Address | None, prefixes: Iterable[Network] = ()
    ) -> Identity:
        """The identity of an IP learned from DNS whose name matches ``selectors`` (selector strings).

        No matching selector: the identity the IP has without DNS (its most specific policy CIDR
        identity, else world of its family).
        """
        chosen = sorted(set(selectors))
        if not chosen:
            containing = [p for p in prefixes if ip is not None and p.version == ip.version and ip in p]
            if containing:
                return self.cidr_identity(max(containing, key=lambda p: p.prefixlen))
            v6 = ip is not None and ip.version == 6
            return self.get(ReservedIdentity.WORLD_IPV6 if v6 else ReservedIdentity.WORLD_IPV4)
        return self.allocate(fqdn_labels(chosen, ip, prefixes))

    def get(self, number: int) -> Identity:
        try:
            return self._by_id[number]
        except KeyError:
            raise IdentityError(f"unknown identity {number}") from None

    def lookup(self, number: int) -> LabelSet | None:
        found = self._by_id.get(number)
        return found.labels if found else None

    def find(self, labels: LabelSet) -> Identity | None:
        return self._by_labels.get(labels)

    def since(self, count: int) -> list[Identity]:
        """The identities allocated after the first ``count`` (identities are never withdrawn, so a
        reader that remembers how many it has seen learns exactly what is new)."""
        return self._log[count:]

    def __iter__(self) -> Iterator[Identity]:
        return iter(sorted(self._by_id.values(), key=lambda i: i.id))

    def __len__(self) -> int:
        return len(self._by_id)

    def snapshot(self) -> tuple[Identity, ...]:
        return tuple(self)

    # -- state file -------------------------------------------------------------------------------
    def dumps(self) -> str:
        rows = [{"id": i.id, "labels": list(i.labels.strings())} for i in self if not i.reserved]
        return json.dumps({"version": 1, "identities": rows}, indent=1, sort_keys=True)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.dumps(), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def loads(cls, text: str) -> IdentityAllocator:
        allocator = cls()
        try:
            data = json.loads(text)
            for row in data["identities"]:
                number = int(row["id"])
                labels = LabelSet.parse(str(s) for s in row["labels"])
                if number < CLUSTER_MIN or number in allocator._by_id or labels in allocator._by_labels:
                    raise IdentityError(f"identity state: conflicting entry {number}")
                allocator._add(Identity(number, labels))
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"identity state is unusable: {exc}") from exc
        return allocator

    @classmethod
    def load(cls, path: Path) -> IdentityAllocator:
        """The allocator saved at ``path``; a fresh one when the file does not exist."""
        if not path.exists():
            return cls()
        return cls.loads(path.read_text(encoding="utf-8"))
