"""deploy/: the kustomization renders (offline), every object validates against the Kubernetes schemas,
the committed CRDs are the generated ones and are structural, and every example policy validates against
the CRD schema. That Cilium's own CRD schema accepts the seeds (so that ours accepts what Cilium's does) is
checked by ``make conformance`` (``tests/conformance/``): Cilium's CRDs are not part of the repository.

``kubectl`` is not available here: :func:`render` is a small resources-only kustomize (the
kustomization is kept to ``resources``, and the test refuses anything else so this stays faithful).
Kubernetes schemas: the ``kubernetes-validate`` package (offline, strict: unknown fields fail).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kube_helpers import REPO

from l7.k8s import crd
from l7.policy.documents import load_text
from l7xds.bootstrap import bootstrap

DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30"
OUR_KIND = {
    "CiliumNetworkPolicy": "L7NetworkPolicy",
    "CiliumClusterwideNetworkPolicy": "L7ClusterwideNetworkPolicy",
    "L7NetworkPolicy": "L7NetworkPolicy",
    "L7ClusterwideNetworkPolicy": "L7ClusterwideNetworkPolicy",
}


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` for a kustomization of plain ``resources`` (files or directories)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not unsupported, f"the test renderer does not implement {unsupported}"
    out: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        assert path.is_relative_to(directory.resolve()), f"{entry}: outside the kustomization root"
        if path.is_dir():
            out += render(path)
        else:
            out += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(DEPLOY)


def test_renders_what_the_issue_lists(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered)
    assert kinds == [
        ("ClusterRole", "l7gate-agent"),
        ("ClusterRoleBinding", "l7gate-agent"),
        ("ConfigMap", "l7gate-agent-config"),
        ("CustomResourceDefinition", "l7clusterwidenetworkpolicies.l7gate.io"),
        ("CustomResourceDefinition", "l7networkpolicies.l7gate.io"),
        ("DaemonSet", "l7gate-agent"),
        ("DaemonSet", "l7gate-envoy"),
        ("Namespace", "l7gate-system"),
        ("ServiceAccount", "l7gate-agent"),
    ]
    for obj in rendered:
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "l7gate-system", obj["metadata"]


def test_every_object_validates_against_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_daemonsets(rendered: list[dict[str, Any]]) -> None:
    by_name = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "DaemonSet"}
    agent = by_name["l7gate-agent"]["spec"]["template"]["spec"]
    assert agent["hostNetwork"] and agent["serviceAccountName"] == "l7gate-agent"
    (container,) = agent["containers"]
    assert container["securityContext"]["privileged"]
    assert {"NET_ADMIN", "BPF", "SYS_ADMIN"} <= set(container["securityContext"]["capabilities"]["add"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/sys/fs/bpf", "/run/netns", "/run/l7gate"} <= mounts
    assert {"livenessProbe", "readinessProbe"} <= set(container)
    assert container["resources"]["requests"]
    assert container["args"][:2] == ["agent", "--kubernetes"]

    envoy = by_name["l7gate-envoy"]["spec"]["template"]["spec"]
    assert envoy["hostNetwork"]
    (proxy,) = envoy["containers"]
    assert "ports" not in proxy  # nothing exposed; admin is a unix socket in an emptyDir
    args = proxy["args"]
    config = yaml.safe_load(args[args.index("--config-yaml") + 1])
    assert config == bootstrap(
        node_id="$(NODE_NAME)",
        xds_address="unix:/run/l7gate/agent/xds-$(NODE_NAME).sock",
        admin_address="unix:/run/envoy/admin.sock",
    )
    shared = {v["name"]: v for v in envoy["volumes"]}["state"]["hostPath"]["path"]
    assert shared == {v["name"]: v for v in agent["volumes"]}["state"]["hostPath"]["path"]


def test_rbac_is_least_privilege(rendered: list[dict[str, Any]]) -> None:
    (role,) = [o for o in rendered if o["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        writes = set(rule["verbs"]) - {"get", "list", "watch"}
        if writes:
            assert writes == {"patch"}, rule
            assert all(r.endswith("/status") for r in rule["resources"]), rule
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule


# ----------------------------------------------------------------------------------------------- CRDs
def test_committed_crds_are_the_generated_ones() -> None:
    committed = (REPO / crd.CRD_FILE).read_text()
    assert committed == crd.render(), "run: python -m l7.k8s.crd > deploy/kubernetes/crds.yaml"


def _structural_problems(node: Any, path: str = "") -> list[str]:
    """The rules of a structural schema the API server enforces (the ones a generator can break)."""
    if not isinstance(node, dict):
        return []
    problems = []
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "default", "title"):
        if forbidden in node:
            problems.append(f"{path}: {forbidden}")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties")
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    for name, child in (node.get("properties") or {}).items():
        problems += _structural_problems(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += _structural_problems(node[key], f"{path}[{key}]")
    return problems


def test_crds_are_structural_with_status_and_columns() -> None:
    for c in crd.crds():
        (version,) = c["spec"]["versions"]
        assert _structural_problems(version["schema"]["openAPIV3Schema"]) == []
        assert version["subresources"] == {"status": {}}
        columns = [col["name"] for col in version["additionalPrinterColumns"]]
        assert columns == ["Valid", "Enforcing Nodes", "Age"]
        assert c["spec"]["names"]["shortNames"]
    scopes = {c["spec"]["names"]["kind"]: c["spec"]["scope"] for c in crd.crds()}
    assert scopes == {"L7NetworkPolicy": "Namespaced", "L7ClusterwideNetworkPolicy": "Cluster"}


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "examples").rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc and doc.get("kind") in OUR_KIND:
                out.append((f"{path.relative_to(DEPLOY)}[{i}]", doc))
    return out


def as_ours(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["apiVersion"] = crd.API_VERSION
    out["kind"] = OUR_KIND[doc["kind"]]
    return out


OURS = jsonschema.Draft7Validator(crd.json_schema(crd.object_schema()))


def test_every_example_policy_validates_against_the_crd_schema() -> None:
    examples = example_documents()
    assert len(examples) >= 25
    for where, doc in examples:
        ours = as_ours(doc)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in OURS.iter_errors(ours)]
        assert errors == [], where
        result = load_text(yaml.safe_dump(ours), where)  # and the controller's validation accepts it
        assert result.errors == (), [str(e) for e in result.errors]
