"""Selectors: pure predicates over label sets (Cilium semantics).

::

    model.EndpointSelector ─► LabelSelector   (namespace-scoped in namespaced policies)
    toEntities / fromEntities ─► EntitySelector (reserved labels; world = every reserved:world identity)
    toCIDR / toCIDRSet        ─► CIDRSelector  (cidr: labels inside the prefix and outside the excepts)
    toFQDNs                   ─► FQDNSelector  (identities carrying fqdn:<selector>)
    fromNodes / toNodes       ─► LabelSelector (+ reserved:remote-node Exists: remote nodes only)
    toServices                ─► ServiceSelector, expanded by the resolver against the Services:
                                 with a selector ─► LabelSelector (its pods), without ─► CIDRSelector /32
    L4-only rule / ``all``    ─► WildcardSelector (every identity, world included)

A selector key ``k8s:app`` matches only labels of source ``k8s``, ``reserved:host`` only ``reserved``;
``app`` or ``any:app`` matches any source.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from l7.labels import (
    ANY,
    CIDR,
    CLUSTER_KEY,
    DEFAULT_CLUSTER,
    FQDN,
    K8S,
    NAMESPACE_KEY,
    RESERVED,
    WILDCARD_SOURCES,
    LabelSet,
)
from l7.policy import model
from l7.policy.cidr import parse_cidr
from l7.policy.fqdn import NameMatcher, normalize

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Selector(Protocol):
    """A peer or subject selector; ``key`` is a stable, readable text form."""

    @property
    def key(self) -> str: ...

    def matches(self, labels: LabelSet) -> bool: ...


def _split(key: str) -> tuple[str, str]:
    source, colon, rest = key.partition(":")
    if not colon:
        return ANY, key
    return (ANY if source in WILDCARD_SOURCES else source), rest


@dataclass(frozen=True)
class Requirement:
    source: str
    key: str
    operator: model.Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        present = labels.values(self.key, None if self.source == ANY else self.source)
        if self.operator is model.Operator.IN:
            return any(v in self.values for v in present)
        if self.operator is model.Operator.NOT_IN:
            return not any(v in self.values for v in present)
        if self.operator is model.Operator.EXISTS:
            return bool(present)
        return not present

    def __str__(self) -> str:
        name = f"{self.source}:{self.key}"
        if self.operator is model.Operator.IN and len(self.values) == 1:
            return f"{name}={self.values[0]}"
        if self.operator in (model.Operator.EXISTS, model.Operator.DOES_NOT_EXIST):
            return f"{name} {self.operator}"
        return f"{name} {self.operator} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """All requirements must hold; no requirement at all selects every identity."""

    requirements: tuple[Requirement, ...]

    @property
    def key(self) -> str:
        return "{" + ", ".join(sorted(map(str, self.requirements))) + "}"

    def matches(self, labels: LabelSet) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def constrains(self, key: str) -> bool:
        return any(r.key == key for r in self.requirements)

    def constrains_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)


@dataclass(frozen=True)
class WildcardSelector:
    """Every identity, inside the cluster and out (an L4-only rule, ``all``, ``{}`` cluster-wide)."""

    @property
    def key(self) -> str:
        return "*"

    def matches(self, labels: LabelSet) -> bool:
        return True


WILDCARD = WildcardSelector()

_WORLD_NAMES = frozenset({"world", "world-ipv4", "world-ipv6"})
_CLUSTER_RESERVED = frozenset(
    {"host", "remote-node", "init", "health", "unmanaged", "kube-apiserver", "ingress"}
)


@dataclass(frozen=True)
class EntitySelector:
    entity: str

    @property
    def key(self) -> str:
        return f"entity:{self.entity}"

    def matches(self, labels: LabelSet) -> bool:
        reserved = {lb.key for lb in labels if lb.source == RESERVED}
        e = self.entity
        if e == "all":
            return True
        if e == "none":
            return False
        if e == "world":
            return bool(reserved & _WORLD_NAMES)
        if e == "cluster":
            return bool(reserved & _CLUSTER_RESERVED) or DEFAULT_CLUSTER in labels.values(CLUSTER_KEY, K8S)
        return e in reserved


@dataclass(frozen=True)
class CIDRSelector:
    """Non-managed peers whose ``cidr:`` prefix lies inside ``prefix`` and outside every except.

    A /0 prefix also selects the world identities of its family (``reserved:world`` and
    ``reserved:world-ipv4`` or ``-ipv6``). Pod, host and node identities carry no ``cidr:`` label, so a
    CIDR rule never selects them.
    """

    prefix: Network
    excepts: tuple[Network, ...] = ()

    @property
    def key(self) -> str:
        text = f"cidr:{self.prefix}"
        return text + "".join(f" except {e}" for e in self.excepts)

    def matches(self, labels: LabelSet) -> bool:
        inside = False
        for lb in labels:
            if lb.source == CIDR:
                net = ipaddress.ip_network(lb.key, strict=False)
                if net.version != self.prefix.version or not net.subnet_of(self.prefix):  # type: ignore[arg-type]
                    continue
                if any(net.subnet_of(e) for e in self.excepts if e.version == net.version):  # type: ignore[arg-type]
                    return False
                inside = True
        if inside:
            return True
        if self.prefix.prefixlen == 0 and not labels.has_source(CIDR):
            own = "world-ipv4" if self.prefix.version == 4 else "world-ipv6"
            keys = {lb.key for lb in labels if lb.source == RESERVED}
            if own in keys or keys == {"world"}:
                return True
        return False


@dataclass(frozen=True)
class FQDNSelector:
    """Identities learned from DNS for names this selector matches (they carry ``fqdn:<text>``)."""

    text: str
    matcher: NameMatcher = field(compare=False, hash=False, repr=False)

    @property
    def key(self) -> str:
        return f"fqdn:{self.text}"

    def matches(self, labels: LabelSet) -> bool:
        return any(lb.source == FQDN and lb.key == self.text for lb in labels)

    def matches_name(self, name: str) -> bool:
        return self.matcher.matches(name)


def fqdn_selector(sel: model.FQDNSelector) -> FQDNSelector:
    if sel.match_name is not None:
        return FQDNSelector(normalize(sel.match_name), NameMatcher(match_name=sel.match_name))
    assert sel.match_pattern is not None
    return FQDNSelector(normalize(sel.match_pattern), NameMatcher(match_pattern=sel.match_pattern))


def label_selector(sel: model.EndpointSelector) -> LabelSelector:
    reqs: list[Requirement] = []
    for key, value in sorted((sel.match_labels or {}).items()):
        source, name = _split(key)
        reqs.append(Requirement(source, name, model.Operator.IN, (value,)))
    for expr in sel.match_expressions or ():
        source, name = _split(expr.key)
        reqs.append(Requirement(source, name, expr.operator, tuple(expr.values or ())))
    return LabelSelector(tuple(reqs))


def _with_namespace(selector: LabelSelector, namespace: str) -> LabelSelector:
    kept = tuple(r for r in selector.requirements if r.key != NAMESPACE_KEY)
    return LabelSelector((*kept, Requirement(K8S, NAMESPACE_KEY, model.Operator.IN, (namespace,))))


def subject_selector(sel: model.EndpointSelector, namespace: str | None) -> LabelSelector:
    """The endpoints a rule applies to. A namespaced policy only ever selects endpoints of its own
    namespace: like Cilium, the namespace requirement is forced (a user-written namespace match is
    replaced)."""
    compiled = label_selector(sel)
    return compiled if namespace is None else _with_namespace(compiled, namespace)


def peer_selector(sel: model.EndpointSelector, namespace: str | None) -> LabelSelector | WildcardSelector:
    """A ``fromEndpoints``/``toEndpoints`` entry. In a namespaced policy it is limited to the policy's
    namespace unless it constrains ``io.kubernetes.pod.namespace`` itself (any source prefix) or names a
    ``reserved:`` label. Cluster-wide, ``{}`` selects every *pod* (Cilium adds
    ``k8s:io.kubernetes.pod.namespace Exists``, cilium/cilium#12890): not world, hosts or nodes."""
    compiled = label_selector(sel)
    if namespace is None:
        if compiled.requirements:
            return compiled
        return LabelSelector((Requirement(K8S, NAMESPACE_KEY, model.Operator.EXISTS),))
    if compiled.constrains(NAMESPACE_KEY) or compiled.constrains_source(RESERVED):
        return compiled
    return _with_namespace(compiled, namespace)


def node_selector(sel: model.EndpointSelector) -> LabelSelector:
    """A ``fromNodes``/``toNodes`` entry, as Cilium's ``getNodeSelector``: the user's requirements (keys
    without a source match any source; remote nodes carry their Node labels as ``k8s:``) plus
    ``reserved:remote-node Exists``. So it selects remote nodes only, never the local ``host``; no
    namespace is added, even in a namespaced policy."""
    compiled = label_selector(sel)
    remote = Requirement(RESERVED, "remote-node", model.Operator.EXISTS)
    return LabelSelector((*compiled.requirements, remote))


def service_pod_selector(selector: tuple[tuple[str, str], ...], namespace: str) -> LabelSelector:
    """The pods a Service with ``selector`` selects: ``k8s:<key>=<value>`` each, in its namespace."""
    reqs = [Requirement(K8S, key, model.Operator.IN, (value,)) for key, value in selector]
    return LabelSelector((*reqs, Requirement(K8S, NAMESPACE_KEY, model.Operator.IN, (namespace,))))


@dataclass(frozen=True)
class ServiceSelector:
    """A ``toServices`` entry: Services by name (``name``) or by their own labels (``labels``), in
    ``namespace`` (None: every namespace — Cilium treats an empty namespace as a wildcard, even in a
    namespaced policy).

    It selects no identity by itself (:meth:`matches` is false): the resolver expands it against the
    Services of the endpoints file (:meth:`selects`) into :func:`service_pod_selector` for a Service
    with a selector and /32 or /128 :class:`CIDRSelector` s of the backends for one without.
    """

    name: str | None
    namespace: str | None
    labels: LabelSelector | None = None

    @property
    def key(self) -> str:
        where = self.namespace if self.namespace is not None else "*"
        if self.name is not None:
            return f"service:{where}/{self.name}"
        return f"service:{where}/{self.labels.key if self.labels is not None else '<none>'}"

    def matches(self, labels: LabelSet) -> bool:
        return False

    def selects(self, name: str, namespace: str, labels: LabelSet) -> bool:
        """Whether the Service ``namespace/name`` with (Service object) ``labels`` is selected."""
        if self.namespace is not None and self.namespace != namespace:
            return False
        if self.name is not None:
            return self.name == name
        return self.labels is not None and self.labels.matches(labels)


def service_selector(service: model.Service) -> ServiceSelector:
    if service.k8s_service is not None:
        return ServiceSelector(service.k8s_service.service_name, service.k8s_service.namespace or None)
    if service.k8s_service_selector is not None:
        by = service.k8s_service_selector
        return ServiceSelector(None, by.namespace or None, label_selector(by.selector))
    return ServiceSelector(None, None)  # invalid (validation refuses it): selects nothing


def cidr_selector(cidr: str, excepts: tuple[str, ...] = ()) -> CIDRSelector:
    return CIDRSelector(parse_cidr(cidr, bare_ip=True), tuple(parse_cidr(e, bare_ip=True) for e in excepts))
