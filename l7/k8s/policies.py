"""Policy objects from the API server → policy documents the agent loads, validated one by one.

Each object becomes one YAML document (``apiVersion, kind, metadata{name, namespace}, spec, specs``; the
server's metadata and the status are left out) and is validated on its own with
:func:`l7.policy.documents.load_text`: a valid one goes into the policy directory, an invalid one stays
out and its errors (with field paths) go into its ``Valid`` condition. So one broken object never
disturbs the enforcement of the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from l7.policy.documents import load_text
from l7.policy.model import Rule


@dataclass(frozen=True)
class Resource:
    """One API resource the controller lists and watches."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


L7NP = Resource("l7gate.io", "v1alpha1", "l7networkpolicies", "L7NetworkPolicy", True)
L7CCNP = Resource(
    "l7gate.io", "v1alpha1", "l7clusterwidenetworkpolicies", "L7ClusterwideNetworkPolicy", False
)
CNP = Resource("cilium.io", "v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", True)
CCNP = Resource(
    "cilium.io", "v2", "ciliumclusterwidenetworkpolicies", "CiliumClusterwideNetworkPolicy", False
)
PODS = Resource("", "v1", "pods", "Pod", True)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
NODES = Resource("", "v1", "nodes", "Node", False)
SERVICES = Resource("", "v1", "services", "Service", True)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True)
SECRETS = Resource("", "v1", "secrets", "Secret", True)  # read one by one (get), never listed

POLICY_RESOURCES = (L7NP, L7CCNP)
CILIUM_RESOURCES = (CNP, CCNP)
#: Only our own kinds get a status written (Cilium's objects belong to Cilium).
STATUS_RESOURCES = frozenset({L7NP, L7CCNP})


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class Translated:
    """One policy object: its document text when valid, else its errors."""

    resource: Resource
    namespace: str | None
    name: str
    generation: int
    text: str | None
    errors: tuple[FieldError, ...]
    secrets: tuple[tuple[str | None, str], ...] = ()  # headerMatches secret references (namespace, name)

    @property
    def key(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.resource.kind}/{ns}{self.name}"

    @property
    def file(self) -> str:
        """Relative path of the document in the policy directory."""
        return f"{self.resource.kind}/{self.namespace or '_cluster'}/{self.name}.yaml"


def document(resource: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The policy document of an API object (only what the policy loader reads)."""
    meta = obj.get("metadata") or {}
    out_meta: dict[str, Any] = {"name": meta.get("name")}
    if resource.namespaced:
        out_meta["namespace"] = meta.get("namespace") or "default"
    doc: dict[str, Any] = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": out_meta}
    for key in ("spec", "specs"):
        if key in obj:
            doc[key] = obj[key]
    return doc


def translate(resource: Resource, obj: Mapping[str, Any]) -> Translated:
    """Validate one object; every error keeps the field path of the document (``spec.egress[0]...``)."""
    meta = obj.get("metadata") or {}
    doc = document(resource, obj)
    text = yaml.safe_dump(doc, sort_keys=True)
    result = load_text(text, f"{resource.kind}/{meta.get('name')}")
    errors = tuple(FieldError(e.path, e.message) for e in result.errors)
    refs = sorted({ref for p in result.policies for rule in p.rules for ref in secret_refs(rule)}, key=str)
    return Translated(
        resource,
        doc["metadata"].get("namespace"),
        str(meta.get("name")),
        int(meta.get("generation") or 0),
        None if errors else text,
        errors,
        () if errors else tuple(refs),
    )


def secret_refs(rule: Rule) -> set[tuple[str | None, str]]:
    """The secrets a rule's ``headerMatches`` refer to: (namespace as written, name)."""
    out: set[tuple[str | None, str]] = set()
    for direction in (rule.ingress, rule.ingress_deny, rule.egress, rule.egress_deny):
        for entry in direction or ():
            for port_rule in entry.to_ports or ():
                for http in (port_rule.rules.http if port_rule.rules else None) or ():
                    for match in http.header_matches or ():
                        if match.secret is not None:
                            out.add((match.secret.namespace, match.secret.name))
    return out
