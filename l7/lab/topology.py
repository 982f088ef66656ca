"""The topology file: nodes, namespaces, pods, services, the cluster DNS and the world, as pydantic models.

Every model forbids unknown fields. :func:`load_topology` / :func:`parse_topology` report *all* problems at
once, each with its field path (``pods[2].server.port``), as a :class:`~l7.lab.errors.TopologyError`.
Cross-references (a pod's node, a record's world host, duplicate names) are checked after the schema.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from l7.lab.errors import TopologyError, TopologyIssue

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL = r"[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?"
_FQDN = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}\.?$")

# Addresses the lab plans itself (see l7.lab.addressing): topology files may not use them for world hosts.
LAB_V4 = ipaddress.ip_network("10.192.0.0/10")
LAB_V6 = ipaddress.ip_network("fd00:7e57::/32")
ULA = ipaddress.ip_network("fc00::/7")

ServerKind = Literal["http", "https", "whoami", "tcp-echo"]
_DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "whoami": 80, "tcp-echo": 7}


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        loc_by_alias=True,
    )


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(f"{value!r} is not a DNS label (lower-case letters, digits and '-', at most 63)")
    return value


def _fqdn(value: str) -> str:
    name = value.lower().rstrip(".")
    if not name or len(name) > 253 or not _FQDN.fullmatch(name):
        raise ValueError(f"{value!r} is not a DNS name")
    return name


def _check_world_v4(value: str) -> str:
    addr = ipaddress.IPv4Address(value)
    if not addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_unspecified:
        raise ValueError(f"{value} is not a private IPv4 address (world hosts never get public addresses)")
    if addr in LAB_V4:
        raise ValueError(f"{value} is inside {LAB_V4}, which the lab plans itself")
    return str(addr)


def _check_world_v6(value: str) -> str:
    addr = ipaddress.IPv6Address(value)
    if addr not in ULA:
        raise ValueError(f"{value} is not a unique local IPv6 address (fc00::/7)")
    if addr in LAB_V6:
        raise ValueError(f"{value} is inside {LAB_V6}, which the lab plans itself")
    return str(addr)


WorldV4 = Annotated[str, AfterValidator(_check_world_v4)]
WorldV6 = Annotated[str, AfterValidator(_check_world_v6)]


class Server(_Model):
    """A server the lab runs: ``http`` (fixed paths → bodies), ``https`` (the same over TLS on 443),
    ``whoami`` (echoes the request like traefik/whoami) or ``tcp-echo``. ``tls`` wraps any kind in TLS
    with a self-signed certificate generated at ``lab up``."""

    kind: ServerKind
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: bool = False
    paths: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _paths_only_for_http(self) -> Server:
        if self.paths is not None and self.kind not in ("http", "https"):
            raise ValueError(f"'paths' is only for http/https servers, not {self.kind}")
        for path in self.paths or {}:
            if not path.startswith("/"):
                raise ValueError(f"path {path!r} must start with '/'")
        return self

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else _DEFAULT_PORTS[self.kind]

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.kind == "https"


class Node(_Model):
    """A node. ``servers`` run in the node's namespace on all its addresses (uplink and router IPs):
    something for pods and the world to reach on the node, e.g. under a host policy."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    servers: list[Server] = Field(default_factory=list)

    _name = field_validator("name")(_dns_label)


class Pod(_Model):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    node: str | None = None
    service_account: str = "default"
    ipv6: bool = True
    ports: dict[str, int] = Field(default_factory=dict)
    server: Server | None = None
    commands: list[list[str]] = Field(default_factory=list)

    _names = field_validator("name", "namespace")(_dns_label)

    @field_validator("commands", mode="before")
    @classmethod
    def _split_commands(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [shlex.split(item) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("commands")
    @classmethod
    def _non_empty(cls, value: list[list[str]]) -> list[list[str]]:
        for argv in value:
            if not argv:
                raise ValueError("a command line is empty")
        return value

    @property
    def key(self) -> str:
        """``namespace/name``: unique within a topology."""
        return f"{self.namespace}/{self.name}"

    def effective_ports(self) -> dict[str, int]:
        if self.ports or self.server is None:
            return dict(self.ports)
        return {self.server.kind: self.server.effective_port}


class Service(_Model):
    """A service resolves (in the lab DNS) to the IPs of the pods it selects: there is no ClusterIP."""

    name: str
    namespace: str = "default"
    selector: dict[str, str]
    ports: dict[str, int] = Field(default_factory=dict)

    _names = field_validator("name", "namespace")(_dns_label)


class Record(_Model):
    """A DNS record: addresses (``a``/``aaaa``), a ``cname``, or the addresses of a ``world`` host.

    A name may start with ``*.`` (a wildcard: every name below it, not the name itself); wildcard records
    use the DNS section's default TTL (dnsmasq serves them with its ``local-ttl``) and cannot be CNAMEs.
    """

    name: str
    a: list[WorldV4] = Field(default_factory=list)
    aaaa: list[WorldV6] = Field(default_factory=list)
    cname: str | None = None
    world: str | None = None
    ttl: int | None = Field(default=None, ge=0, le=604800)

    _name = field_validator("name")(_fqdn)

    @field_validator("cname")
    @classmethod
    def _cname(cls, value: str | None) -> str | None:
        return None if value is None else _fqdn(value)

    @model_validator(mode="after")
    def _one_kind(self) -> Record:
        kinds = [bool(self.a or self.aaaa), self.cname is not None, self.world is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of: a/aaaa addresses, cname, world")
        if self.wildcard and self.cname is not None:
            raise ValueError("a wildcard name cannot be a CNAME")
        if self.wildcard and self.ttl is not None:
            raise ValueError("a wildcard record uses dns.ttl (dnsmasq's local-ttl); remove 'ttl'")
        return self

    @property
    def wildcard(self) -> bool:
        return self.name.startswith("*.")


class Dns(_Model):
    """The cluster DNS: a pod in kube-system (labels ``k8s-app: kube-dns``) running dnsmasq."""

    name: str = "kube-dns"
    node: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    ttl: int = Field(default=30, ge=0, le=604800)
    records: list[Record] = Field(default_factory=list)

    _name = field_validator("name")(_dns_label)


class WorldHost(_Model):
    """A host outside the cluster, behind the fabric. ``names`` resolve to its addresses in the lab DNS.

    ``ipv4``/``ipv6`` omitted: the lab picks one address of each family from its own range; given: private
    IPv4 / unique local IPv6 addresses outside the lab's ranges (never real public addresses).
    """

    name: str
    names: list[str] = Field(default_factory=list)
    ipv4: list[WorldV4] | None = None
    ipv6: list[WorldV6] | None = None
    servers: list[Server] = Field(default_factory=lambda: [Server(kind="http"), Server(kind="https")])
    ttl: int | None = Field(default=None, ge=0, le=604800)

    _name = field_validator("name")(_dns_label)

    @field_validator("names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        out = [_fqdn(v) for v in value]
        for name in out:
            if name.startswith("*."):
                raise ValueError(f"{name}: world host names cannot be wildcards (use a dns record)")
        return out


class LabSecret(_Model):
    """A TLS Secret the lab writes at ``lab up`` into the agents' secrets directory
    (``agent/secrets/<namespace>/<name>/``, the Secret's keys as files), for ``terminatingTLS`` and
    ``originatingTLS``. Exactly one of:

    - ``issue``: ``tls.crt``/``tls.key`` for these DNS names, signed by the lab's test CA
      (``certs/lab-ca.crt``: what a pod passes to ``curl --cacert``);
    - ``trust``: ``ca.crt`` = the certificate of this pod's, world host's or node's TLS servers.
    """

    name: str
    namespace: str = "default"
    issue: list[str] | None = None
    trust: str | None = None

    _names = field_validator("name", "namespace")(_dns_label)

    @field_validator("issue")
    @classmethod
    def _issue_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("give at least one DNS name")
        return None if value is None else [_fqdn(v) for v in value]

    @model_validator(mode="after")
    def _one_kind(self) -> LabSecret:
        if (self.issue is None) == (self.trust is None):
            raise ValueError("give exactly one of: issue, trust")
        return self


class Topology(_Model):
    """A lab: Kubernetes-like nodes and pods as network namespaces, a DNS pod, and world hosts."""

    description: str = ""
    nodes: list[Node] = Field(min_length=1)
    namespaces: dict[str, dict[str, str]] = Field(default_factory=dict)
    pods: list[Pod] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)
    dns: Dns = Field(default_factory=Dns)
    world: list[WorldHost] = Field(default_factory=list)
    secrets: list[LabSecret] = Field(default_factory=list)

    def node_of(self, pod: Pod) -> str:
        return pod.node if pod.node is not None else self.nodes[0].name

    def dns_node(self) -> str:
        return self.dns.node if self.dns.node is not None else self.nodes[0].name

    def dns_pod(self) -> Pod:
        """The DNS server as a pod (kube-system, ``k8s-app: kube-dns``), as the policy engine sees it."""
        return Pod(
            name=self.dns.name,
            namespace="kube-system",
            labels={"k8s-app": "kube-dns", **self.dns.labels},
            node=self.dns_node(),
            service_account="coredns",
            ports={"dns": 53},
        )

    def all_pods(self) -> list[Pod]:
        """The topology's pods and the DNS pod."""
        return [*self.pods, self.dns_pod()]

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": namespace, **self.namespaces.get(namespace, {})}

    def selected(self, service: Service) -> list[Pod]:
        return [
            pod
            for pod in self.all_pods()
            if pod.namespace == service.namespace
            and all(pod.labels.get(k) == v for k, v in service.selector.items())
        ]


def _cross_check(topo: Topology) -> list[TopologyIssue]:
    issues: list[TopologyIssue] = []
    nodes = [n.name for n in topo.nodes]
    for i, name in enumerate(nodes):
        if name in nodes[:i]:
            issues.append(TopologyIssue(f"nodes[{i}].name", f"duplicate node {name!r}"))
    for i, node in enumerate(topo.nodes):
        ports = [s.effective_port for s in node.servers]
        for j, port in enumerate(ports):
            if port in ports[:j]:
                issues.append(TopologyIssue(f"nodes[{i}].servers[{j}].port", f"port {port} is used twice"))
    if len(topo.nodes) > 40:
        issues.append(TopologyIssue("nodes", "at most 40 nodes"))
    if topo.dns.node is not None and topo.dns.node not in nodes:
        issues.append(TopologyIssue("dns.node", f"no node named {topo.dns.node!r}"))
    for ns in topo.namespaces:
        try:
            _dns_label(ns)
        except ValueError as exc:
            issues.append(TopologyIssue(f"namespaces[{ns}]", str(exc)))
    keys: list[str] = []
    for i, pod in enumerate(topo.pods):
        if pod.node is None and len(topo.nodes) > 1:
            issues.append(TopologyIssue(f"pods[{i}].node", "required when the topology has several nodes"))
        elif pod.node is not None and pod.node not in nodes:
            issues.append(TopologyIssue(f"pods[{i}].node", f"no node named {pod.node!r}"))
        if pod.key in keys:
            issues.append(TopologyIssue(f"pods[{i}].name", f"duplicate pod {pod.key!r}"))
        if pod.key == topo.dns_pod().key:
            issues.append(TopologyIssue(f"pods[{i}].name", f"{pod.key!r} is the DNS pod (dns.name)"))
        keys.append(pod.key)
    services: list[str] = []
    for i, svc in enumerate(topo.services):
        key = f"{svc.namespace}/{svc.name}"
        if key in services:
            issues.append(TopologyIssue(f"services[{i}].name", f"duplicate service {key!r}"))
        services.append(key)
        if not svc.selector:
            issues.append(TopologyIssue(f"services[{i}].selector", "empty selector"))
        elif not topo.selected(svc):
            issues.append(TopologyIssue(f"services[{i}].selector", "selects no pod"))
    worlds = [w.name for w in topo.world]
    names: dict[str, str] = {}
    for i, host in enumerate(topo.world):
        if host.name in worlds[:i]:
            issues.append(TopologyIssue(f"world[{i}].name", f"duplicate world host {host.name!r}"))
        if host.ipv4 == [] and host.ipv6 == []:
            issues.append(TopologyIssue(f"world[{i}]", "a world host needs at least one address"))
        for j, name in enumerate(host.names):
            if name in names:
                issues.append(TopologyIssue(f"world[{i}].names[{j}]", f"{name} is also {names[name]}"))
            names[name] = f"world host {host.name}"
        ports = [s.effective_port for s in host.servers]
        for j, port in enumerate(ports):
            if port in ports[:j]:
                issues.append(TopologyIssue(f"world[{i}].servers[{j}].port", f"port {port} is used twice"))
    for i, rec in enumerate(topo.dns.records):
        if rec.world is not None and rec.world not in worlds:
            issues.append(TopologyIssue(f"dns.records[{i}].world", f"no world host named {rec.world!r}"))
        if rec.name in names:
            issues.append(TopologyIssue(f"dns.records[{i}].name", f"{rec.name} is also {names[rec.name]}"))
        names[rec.name] = f"dns.records[{i}]"
        if rec.name.endswith("cluster.local"):
            issues.append(TopologyIssue(f"dns.records[{i}].name", "cluster.local names come from pods"))
    issues += _check_secrets(topo)
    return issues


def _check_secrets(topo: Topology) -> list[TopologyIssue]:
    tls_owners = {p.name for p in topo.pods if p.server is not None and p.server.uses_tls}
    owners: list[WorldHost | Node] = [*topo.world, *topo.nodes]
    tls_owners |= {owner.name for owner in owners if any(s.uses_tls for s in owner.servers)}
    issues: list[TopologyIssue] = []
    keys: list[str] = []
    for i, secret in enumerate(topo.secrets):
        key = f"{secret.namespace}/{secret.name}"
        if key in keys:
            issues.append(TopologyIssue(f"secrets[{i}].name", f"duplicate secret {key!r}"))
        keys.append(key)
        if secret.issue is not None and "lab-ca" in tls_owners:
            issues.append(TopologyIssue(f"secrets[{i}].issue", "a TLS server is named 'lab-ca' (the CA)"))
        if secret.trust is not None and secret.trust not in tls_owners:
            what = f"no pod, world host or node named {secret.trust!r} serves TLS"
            issues.append(TopologyIssue(f"secrets[{i}].trust", what))
    return issues


def _loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in ("str", "list", "dict", "int", "bool"):
            continue
        elif path.endswith(("labels", "selector", "namespaces", "ports", "paths")) and path:
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def parse_topology(data: object, source: str = "<topology>") -> Topology:
    """Validate a topology document (loaded from YAML); raise :class:`TopologyError` with every issue."""
    if not isinstance(data, dict):
        raise TopologyError(source, [TopologyIssue("", "the document must be a mapping")])
    try:
        topo = Topology.model_validate(data)
    except ValidationError as exc:
        issues = [TopologyIssue(_loc(tuple(err["loc"])), err["msg"]) for err in exc.errors()]
        raise TopologyError(source, issues) from None
    issues = _cross_check(topo)
    if issues:
        raise TopologyError(source, issues)
    return topo


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise TopologyError(str(p), [TopologyIssue("", f"cannot read: {exc.strerror}")]) from exc
    except yaml.YAMLError as exc:
        raise TopologyError(str(p), [TopologyIssue("", f"not YAML: {exc}")]) from exc
    return parse_topology(data, str(p))
