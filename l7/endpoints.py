"""The endpoints file: the workloads, namespaces, nodes, services and world hosts that policies are
resolved for.

::

    endpoints:                      # pods
      - name: service-pod
        namespace: default          # default "default"
        labels: {app: service}
        ips: [10.0.1.10, fd00::10]
        node: k8s-w1                # optional
        serviceAccount: default     # optional
        ports: {http: 80}           # named container ports, optional
    namespaces:   {kube-system: {labels: {team: infra}}}
    nodes:        [{name: k8s-w1, ips: [192.168.10.101], labels: {...}}]
    services:                       # Kubernetes Services, for toServices
      - name: myservice
        namespace: default          # default "default"
        labels: {env: staging}      # the Service object's own labels (k8sServiceSelector)
        selector: {app: web}        # the pods it selects; null/absent/{}: a Service without a selector ...
        backends: [10.0.9.1]        # ... whose backends (Endpoints) are these IPs
    fqdns:        {api.github.com: [140.82.112.5]}      # world hosts: what DNS answers

A remote node gets the identity of its labels (``l7.identity.node_labels``); the local node is ``host``.

Validation reports every problem with its field path (``endpoints[2].ips[0]``).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from l7.errors import L7GateError
from l7.identity import Identity, IdentityAllocator, ReservedIdentity, node_labels
from l7.labels import K8S, Label, LabelSet, k8s_labels

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointsError(L7GateError):
    """The endpoints file is invalid: ``problems`` holds ``(field path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}: {m}" if p else f"{source}: {m}" for p, m in problems))


def _ip(value: str) -> str:
    return str(ipaddress.ip_address(value))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EndpointSpec(_Model):
    name: str = Field(min_length=1)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    ips: tuple[str, ...] = ()
    node: str | None = None
    service_account: str = Field(default="default", alias="serviceAccount")
    ports: dict[str, int] = Field(default_factory=dict)
    policy_audit_mode: bool = Field(default=False, alias="policyAuditMode")
    """Audit mode for this endpoint: would-be drops and 403s are allowed and reported as ``audit``."""

    @field_validator("ips")
    @classmethod
    def _ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_ip(v) for v in value)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: dict[str, int]) -> dict[str, int]:
        for name, number in value.items():
            if not 1 <= number <= 65535:
                raise ValueError(f"port {name}: {number} is out of range 1-65535")
        return {name.lower(): number for name, number in value.items()}


class NamespaceSpec(_Model):
    labels: dict[str, str] = Field(default_factory=dict)


class NodeSpec(_Model):
    name: str = Field(min_length=1)
    ips: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("ips")
    @classmethod
    def _ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_ip(v) for v in value)


class ServiceSpec(_Model):
    name: str = Field(min_length=1)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    selector: dict[str, str] | None = None
    backends: tuple[str, ...] = ()

    @field_validator("backends")
    @classmethod
    def _backends(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_ip(v) for v in value)

    @model_validator(mode="after")
    def _selector_or_backends(self) -> ServiceSpec:
        if self.selector and self.backends:
            raise ValueError(
                f"service {self.namespace}/{self.name}: backends are only for a Service without a selector "
                "(a Service with a selector is backed by the pods it selects)"
            )
        return self


class EndpointsFile(_Model):
    endpoints: tuple[EndpointSpec, ...] = ()
    namespaces: dict[str, NamespaceSpec] = Field(default_factory=dict)
    nodes: tuple[NodeSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    fqdns: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    policy_audit_mode: bool = Field(default=False, alias="policyAuditMode")
    """Audit mode for every endpoint of the file (see :attr:`EndpointSpec.policy_audit_mode`)."""

    def audited(self) -> frozenset[str]:
        """Keys (``namespace/name``) of the endpoints in audit mode."""
        return frozenset(
            f"{e.namespace}/{e.name}" for e in self.endpoints if self.policy_audit_mode or e.policy_audit_mode
        )

    @field_validator("fqdns")
    @classmethod
    def _fqdns(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return {name.lower().rstrip("."): tuple(_ip(v) for v in ips) for name, ips in value.items()}

    @model_validator(mode="after")
    def _unique(self) -> EndpointsFile:
        check_unique(self)
        return self


def check_unique(file: EndpointsFile) -> None:
    """Endpoint names and IPs, node names and Service names are used once (``ValueError``)."""
    seen: set[tuple[str, str]] = set()
    ips: set[str] = set()
    for ep in file.endpoints:
        if (ep.namespace, ep.name) in seen:
            raise ValueError(f"duplicate endpoint {ep.namespace}/{ep.name}")
        seen.add((ep.namespace, ep.name))
        for ip in ep.ips:
            if ip in ips:
                raise ValueError(f"endpoint {ep.namespace}/{ep.name}: IP {ip} is used twice")
            ips.add(ip)
    nodes = [n.name for n in file.nodes]
    if len(set(nodes)) != len(nodes):
        raise ValueError("duplicate node name")
    services: set[tuple[str, str]] = set()
    for svc in file.services:
        if (svc.namespace, svc.name) in services:
            raise ValueError(f"duplicate service {svc.namespace}/{svc.name}")
        services.add((svc.namespace, svc.name))


@dataclass(frozen=True)
class Endpoint:
    """One workload as resolution sees it: its identity labels and identity number."""

    name: str
    namespace: str
    labels: LabelSet
    ips: tuple[str, ...]
    identity: int
    node: str | None = None
    ports: tuple[tuple[str, int], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str) -> int | None:
        return dict(self.ports).get(name.lower())


@dataclass(frozen=True)
class Node:
    """A node; ``identity`` is what it is seen as from the *other* nodes (its node-labels identity, or
    ``reserved:remote-node`` (6) without labels). From itself its addresses are ``host`` (1)."""

    name: str
    ips: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()
    identity: int = int(ReservedIdentity.REMOTE_NODE)


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service: ``selector`` None means a Service without a selector, backed by ``backends``."""

    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    selector: tuple[tuple[str, str], ...] | None = None
    backends: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label_set(self) -> LabelSet:
        """The Service object's own labels (source ``k8s``), as ``k8sServiceSelector`` matches them."""
        return LabelSet.of(Label(K8S, key, value) for key, value in self.labels)


@dataclass(frozen=True)
class Topology:
    """The loaded endpoints file: endpoints with identities, nodes, services and known world hosts."""

    endpoints: tuple[Endpoint, ...]
    nodes: tuple[Node, ...]
    fqdns: tuple[tuple[str, tuple[str, ...]], ...]
    services: tuple[Service, ...] = ()

    def find(self, ref: str) -> Endpoint | None:
        """``name`` or ``namespace/name``; a bare name must be unique across namespaces."""
        if "/" in ref:
            namespace, _, name = ref.partition("/")
            return next((e for e in self.endpoints if e.namespace == namespace and e.name == name), None)
        matches = [e for e in self.endpoints if e.name == ref]
        return matches[0] if len(matches) == 1 else None

    def by_ip(self, ip: str) -> Endpoint | None:
        return next((e for e in self.endpoints if ip in e.ips), None)

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def fqdn_ips(self, name: str) -> tuple[str, ...]:
        return dict(self.fqdns).get(name.lower().rstrip("."), ())

    def service(self, ref: str) -> Service | None:
        """``name`` or ``namespace/name``; a bare name must be unique across namespaces."""
        if "/" in ref:
            namespace, _, name = ref.partition("/")
            return next((s for s in self.services if s.namespace == namespace and s.name == name), None)
        matches = [s for s in self.services if s.name == ref]
        return matches[0] if len(matches) == 1 else None

    def service_pods(self, service: Service) -> tuple[Endpoint, ...]:
        """The endpoints a Service with a selector selects: its namespace, every selector label equal."""
        if service.selector is None:
            return ()
        wanted = dict(service.selector)
        return tuple(
            e
            for e in self.endpoints
            if e.namespace == service.namespace
            and all(value in e.labels.values(key, K8S) for key, value in wanted.items())
        )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_endpoints(data: Any, source: str = "<memory>") -> EndpointsFile:
    if data is None:
        data = {}
    try:
        return EndpointsFile.model_validate(data)
    except ValidationError as exc:
        problems = [(_loc(tuple(e["loc"])), str(e["msg"])) for e in exc.errors()]
        raise EndpointsError(source, problems) from None


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~4x faster


def _parse(text: str) -> Any:
    """JSON (what the lab and the Kubernetes controller write: ~300x faster than YAML at 5,000
    endpoints) when the text is JSON, else YAML."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # e.g. a YAML flow mapping: YAML says what is wrong
    return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader (C or Python)


def load_endpoints_text(text: str, source: str = "<memory>") -> EndpointsFile:
    try:
        data = _parse(text)
    except yaml.YAMLError as exc:
        raise EndpointsError(source, [("", f"YAML error: {exc}")]) from None
    return parse_endpoints(data, source)


def load_endpoints(path: Path) -> EndpointsFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EndpointsError(str(path), [("", f"cannot read: {exc}")]) from None
    return load_endpoints_text(text, str(path))


def endpoint_labels(spec: EndpointSpec, namespaces: dict[str, NamespaceSpec]) -> LabelSet:
    ns = namespaces.get(spec.namespace)
    return k8s_labels(
        spec.labels,
        namespace=spec.namespace,
        namespace_labels=ns.labels if ns else None,
        service_account=spec.service_account,
    )


def endpoint_of(
    spec: EndpointSpec, namespaces: dict[str, NamespaceSpec], allocator: IdentityAllocator
) -> Endpoint:
    """One endpoint with the identity of its labels (allocated when new)."""
    identity: Identity = allocator.allocate(endpoint_labels(spec, namespaces))
    return Endpoint(
        spec.name,
        spec.namespace,
        identity.labels,
        spec.ips,
        identity.id,
        spec.node,
        tuple(sorted(spec.ports.items())),
    )


def build_topology(file: EndpointsFile, allocator: IdentityAllocator) -> Topology:
    """Endpoints, then remote-node identities, allocated (in file order) from ``allocator``."""
    endpoints = [endpoint_of(spec, file.namespaces, allocator) for spec in file.endpoints]
    nodes = tuple(
        Node(n.name, n.ips, tuple(sorted(n.labels.items())), allocator.allocate(node_labels(n.labels)).id)
        for n in file.nodes
    )
    services = tuple(
        Service(
            s.name,
            s.namespace,
            tuple(sorted(s.labels.items())),
            tuple(sorted(s.selector.items())) if s.selector else None,  # {} is no selector, as in k8s
            s.backends,
        )
        for s in file.services
    )
    fqdns = tuple(sorted(file.fqdns.items()))
    return Topology(tuple(endpoints), nodes, fqdns, services)


class EndpointsLoader:
    """:func:`load_endpoints`, validating again only the endpoints whose entry in the file changed
    since the last load (a Kubernetes-sized file is mostly unchanged between two writes). Any problem
    falls back to the full validation, so errors and their field paths are exactly those of
    :func:`parse_endpoints`."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], tuple[dict[str, Any], EndpointSpec]] = {}

    def load(self, path: Path) -> EndpointsFile:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise EndpointsError(str(path), [("", f"cannot read: {exc}")]) from None
        try:
            data = _parse(text)
        except yaml.YAMLError as exc:
            raise EndpointsError(str(path), [("", f"YAML error: {exc}")]) from None
        try:
            return self._quick(data)
        except (ValidationError, ValueError, TypeError, KeyError, AttributeError):
            self._specs = {}
            file = parse_endpoints(data, str(path))  # the full validation says what is wrong
            self._remember(data, file)
            return file

    def _quick(self, data: Any) -> EndpointsFile:
        rows = data["endpoints"] if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise TypeError("not an endpoints list")
        specs: list[EndpointSpec] = []
        for row in rows:
            key = (str(row.get("namespace", "default")), str(row["name"]))
            cached = self._specs.get(key)
            specs.append(
                cached[1] if cached is not None and cached[0] == row else EndpointSpec.model_validate(row)
            )
        rest = EndpointsFile.model_validate({**data, "endpoints": []})
        file = rest.model_copy(update={"endpoints": tuple(specs)})
        check_unique(file)  # the file-wide checks (names and IPs used once)
        self._remember(data, file)
        return file

    def _remember(self, data: Any, file: EndpointsFile) -> None:
        rows = data.get("endpoints") if isinstance(data, dict) else None
        if not isinstance(rows, list) or len(rows) != len(file.endpoints):
            self._specs = {}
            return
        self._specs = {
            (spec.namespace, spec.name): (row, spec) for row, spec in zip(rows, file.endpoints, strict=True)
        }


class TopologyBuilder:
    """:func:`build_topology`, reusing the :class:`Endpoint` of every endpoint whose spec (and
    namespace labels) did not change since the last call: a changed endpoints file costs a comparison
    per endpoint, and label and identity work only for what changed. Unchanged endpoints are the very
    same objects, so the engine skips them by identity."""

    def __init__(self, allocator: IdentityAllocator) -> None:
        self.allocator = allocator
        self._namespaces: dict[str, NamespaceSpec] | None = None
        self._endpoints: dict[tuple[str, str], tuple[EndpointSpec, Endpoint]] = {}
        self._last: tuple[EndpointsFile, Topology] | None = None

    def build(self, file: EndpointsFile) -> Topology:
        if self._last is not None and self._last[0] is file:
            return self._last[1]
        if file.namespaces != self._namespaces:
            self._endpoints = {}
            self._namespaces = dict(file.namespaces)
        kept: dict[tuple[str, str], tuple[EndpointSpec, Endpoint]] = {}
        endpoints: list[Endpoint] = []
        for spec in file.endpoints:
            key = (spec.namespace, spec.name)
            cached = self._endpoints.get(key)
            if cached is not None and (cached[0] is spec or cached[0] == spec):
                endpoint = cached[1]
            else:
                endpoint = endpoint_of(spec, file.namespaces, self.allocator)
            kept[key] = (spec, endpoint)
            endpoints.append(endpoint)
        self._endpoints = kept
        rest = build_topology(file.model_copy(update={"endpoints": ()}), self.allocator)
        topology = Topology(tuple(endpoints), rest.nodes, rest.fqdns, rest.services)
        self._last = (file, topology)
        return topology
