"""The CustomResourceDefinitions of ``L7NetworkPolicy`` and ``L7ClusterwideNetworkPolicy``, generated from
the pydantic policy model (one source of truth; ``tests/kube`` checks the committed YAML equals this).

The JSON schema pydantic produces is turned into a *structural* OpenAPI v3 schema as the API server wants
it: ``$ref`` inlined, ``X | None`` as plain ``X`` (absent means unset), ``int | str`` as
``x-kubernetes-int-or-string``, no ``title``/``default``/``additionalProperties: false`` (unknown fields are
pruned by the API server; ``kubectl`` with strict field validation rejects them, naming the field).
The structural schema checks shape; semantic validation (CIDRs, regexes, port ranges, ...) is the
controller's and ends up in the ``Valid`` condition with field paths.

``json_schema`` turns an OpenAPI schema back into plain JSON Schema (for offline validation in tests).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from l7.k8s.crd_docs import field_doc, plain
from l7.k8s.status import MAX_FAILURES
from l7.policy.model import Rule

GROUP = "l7gate.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_FILE = "deploy/kubernetes/crds.yaml"  # relative to the repository root


@dataclass(frozen=True)
class Names:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    namespaced: bool

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


NETWORK_POLICY = Names("L7NetworkPolicy", "l7networkpolicies", "l7networkpolicy", ("l7np",), True)
CLUSTERWIDE_POLICY = Names(
    "L7ClusterwideNetworkPolicy",
    "l7clusterwidenetworkpolicies",
    "l7clusterwidenetworkpolicy",
    ("l7ccnp",),
    False,
)
KINDS = (NETWORK_POLICY, CLUSTERWIDE_POLICY)

_DROP = frozenset({"title", "default", "additionalProperties_false"})


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """Inline ``$ref``s, flatten ``X | None``, drop what a structural schema does not allow."""
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            return _inline({**options[0], **rest}, defs)
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"]:
            return _inline({**rest, "x-kubernetes-int-or-string": True}, defs)
        raise ValueError(f"no structural schema for anyOf {options}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "properties":
            out[key] = {name: _inline(v, defs) for name, v in value.items()}
        else:
            out[key] = _inline(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


# Where the structural schema is wider than the model's pydantic schema: YAML ``port: 80`` is accepted by
# the model (and by Cilium's users), so the CRD takes an int or a string there.
_INT_OR_STRING = (("properties", "toPorts", "items", "properties", "ports", "items", "properties", "port"),)


def _describe(node: Any, parent: str) -> None:
    """Give every property its ``kubectl explain`` text (:mod:`l7.k8s.crd_docs`), in place."""
    if not isinstance(node, dict):
        return
    for name, child in (node.get("properties") or {}).items():
        text = field_doc(parent, name) or plain(child.get("description", ""))
        if text:
            child["description"] = text
        _describe(child, name)
    for key in ("items", "additionalProperties"):
        child = node.get(key)
        if isinstance(child, dict):
            if "description" in child:
                child["description"] = plain(child["description"])
            _describe(child, parent)


def rule_schema() -> dict[str, Any]:
    """The OpenAPI v3 (structural) schema of one rule (``spec`` / an entry of ``specs``)."""
    raw = Rule.model_json_schema(by_alias=True)
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    schema["description"] = "One rule: which endpoints it selects and what they may send and receive."
    _describe(schema, "spec")
    for direction in ("ingress", "egress", "ingressDeny", "egressDeny"):
        for path in _INT_OR_STRING:
            node = schema["properties"][direction]["items"]
            for part in path:
                node = node[part]
            node.pop("type", None)
            node["x-kubernetes-int-or-string"] = True
    return schema


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A condition: Valid (the spec passed validation) or Enforced (nodes enforce it).",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "description": "Valid or Enforced."},
            "status": {
                "type": "string",
                "enum": ["True", "False", "Unknown"],
                "description": "True or False.",
            },
            "reason": {
                "type": "string",
                "description": "Valid, Invalid, Enforced, Failed (a node failed) or Pending (none yet).",
            },
            "message": {"type": "string", "description": "Details: the errors, or the node counts."},
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "description": "The generation of the spec this condition is about.",
            },
            "lastTransitionTime": {
                "type": "string",
                "format": "date-time",
                "description": "When status last changed.",
            },
        },
    }


def status_schema() -> dict[str, Any]:
    """What the controllers write (see :mod:`l7.k8s.status`): counts and the failing nodes, never a map
    of every node."""
    return {
        "type": "object",
        "description": "Written by the l7gate node agents: validation and how many nodes enforce the policy.",
        "properties": {
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "description": "The generation of the spec the counts below are about.",
            },
            "enforcingNodes": {
                "type": "integer",
                "description": "How many nodes enforce this generation of the policy.",
            },
            "failingNodes": {
                "type": "integer",
                "description": "How many nodes failed to enforce this generation (see failures).",
            },
            "failures": {
                "type": "array",
                "description": (
                    f"Failing nodes and their errors (at most {MAX_FAILURES}; failingNodes counts all)."
                ),
                "items": {
                    "type": "object",
                    "required": ["node", "message"],
                    "properties": {
                        "node": {"type": "string", "description": "The node's name."},
                        "message": {
                            "type": "string",
                            "description": "Why its agent does not enforce the policy.",
                        },
                    },
                },
            },
            "conditions": {
                "type": "array",
                "description": "Valid and Enforced.",
                "items": _condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "errors": {
                "type": "array",
                "description": "Every validation error, with its field path.",
                "items": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "path": {"type": "string", "description": "Where, e.g. spec.egress[0].toPorts[0]."},
                        "message": {"type": "string", "description": "What is wrong there."},
                    },
                },
            },
        },
    }


def object_schema() -> dict[str, Any]:
    rule = rule_schema()
    specs = copy.deepcopy(rule)
    specs["description"] = "More rules, each like spec (a policy may have spec, specs or both)."
    return {
        "type": "object",
        "description": "An l7gate network policy: CiliumNetworkPolicy-shaped rules (spec and/or specs).",
        "properties": {
            "apiVersion": {"type": "string", "description": f"{API_VERSION}."},
            "kind": {"type": "string", "description": "L7NetworkPolicy or L7ClusterwideNetworkPolicy."},
            "metadata": {"type": "object", "description": "Standard object metadata."},
            "spec": rule,
            "specs": {"type": "array", "description": specs.pop("description"), "items": specs},
            "status": status_schema(),
        },
    }


def crd(names: Names) -> dict[str, Any]:
    columns = [
        {
            "name": "Valid",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Valid")].status',
        },
        {
            "name": "Enforcing Nodes",
            "type": "integer",
            "jsonPath": ".status.enforcingNodes",
        },
        {
            "name": "Failing Nodes",
            "type": "integer",
            "jsonPath": ".status.failingNodes",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": names.crd_name, "labels": {"app.kubernetes.io/part-of": "l7gate"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": names.kind,
                "listKind": f"{names.kind}List",
                "plural": names.plural,
                "singular": names.singular,
                "shortNames": list(names.short_names),
                "categories": ["l7gate"],
            },
            "scope": "Namespaced" if names.namespaced else "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": object_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [crd(n) for n in KINDS]


HEADER = "# Generated from l7/policy/model.py by `python -m l7.k8s.crd` - do not edit.\n"


def render() -> str:
    """The committed ``deploy/kubernetes/crds.yaml`` text."""
    docs = [yaml.safe_dump(c, sort_keys=False, width=110) for c in crds()]
    return HEADER + "---\n" + "---\n".join(docs)


def json_schema(openapi: Any) -> Any:
    """An OpenAPI v3 (Kubernetes flavour) schema as plain JSON Schema: int-or-string as ``anyOf``."""
    if isinstance(openapi, list):
        return [json_schema(v) for v in openapi]
    if not isinstance(openapi, dict):
        return openapi
    out = {k: json_schema(v) for k, v in openapi.items() if not k.startswith("x-kubernetes-")}
    if openapi.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if openapi.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if out.get("format") in ("int32", "int64"):
        out.pop("format")
    return out


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
