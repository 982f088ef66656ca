"""deploy/: the kustomization renders with the real ``kubectl kustomize``, every object validates against
the Kubernetes schemas, the committed CRDs are the generated ones, are structural and explain every field in
plain text, RBAC is least privilege (Secrets: ``get`` in one namespace), the DaemonSets probe over HTTP and
the DNS socket keeper outlives the agent, and every example policy validates against the CRD schema. That
Cilium's own CRD schema accepts the seeds is checked by ``make conformance`` (``tests/conformance/``).

Kubernetes schemas: the ``kubernetes-validate`` package (offline, strict: unknown fields fail). ``kubectl``
1.32 (with kustomize) is on the machine image; ``kubectl explain`` needs an API server, so the CRD
descriptions are checked in the schema itself.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from kube_helpers import REPO

from l7.cli import app, register
from l7.k8s import crd, crd_docs
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
    """``kubectl kustomize DIR``, for real."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not installed: these tests render deploy/ with `kubectl kustomize` "
            "(kubectl 1.32 with kustomize v5, https://kubernetes.io/docs/tasks/tools/)",
            pytrace=False,
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


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
        ("DaemonSet", "l7gate-dns-keeper"),
        ("DaemonSet", "l7gate-envoy"),
        ("Namespace", "l7gate-secrets"),
        ("Namespace", "l7gate-system"),
        ("Role", "l7gate-agent-secrets"),
        ("RoleBinding", "l7gate-agent-secrets"),
        ("ServiceAccount", "l7gate-agent"),
    ]
    for obj in rendered:
        if obj["kind"] in ("Role", "RoleBinding"):
            assert obj["metadata"]["namespace"] == "l7gate-secrets", obj["metadata"]
        elif obj["kind"] not in (
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ):
            assert obj["metadata"]["namespace"] == "l7gate-system", obj["metadata"]


def test_every_object_validates_against_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _daemonsets(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered if o["kind"] == "DaemonSet"}


def test_agent_daemonset_probes_over_http_and_declares_its_metrics_port(
    rendered: list[dict[str, Any]],
) -> None:
    agent = _daemonsets(rendered)["l7gate-agent"]["spec"]["template"]["spec"]
    assert agent["hostNetwork"] and agent["serviceAccountName"] == "l7gate-agent"
    (container,) = agent["containers"]
    assert container["securityContext"]["privileged"]
    assert {"NET_ADMIN", "BPF", "SYS_ADMIN"} <= set(container["securityContext"]["capabilities"]["add"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/sys/fs/bpf", "/run/netns", "/run/l7gate"} <= mounts
    assert container["resources"]["requests"]
    args = container["args"]
    assert args[:2] == ["agent", "--kubernetes"]
    assert args[args.index("--metrics-address") + 1] == "0.0.0.0:9962"
    assert args[args.index("--secrets-namespace") + 1] == "l7gate-secrets"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9962, "protocol": "TCP"}]
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths = {k: (p["httpGet"]["path"], p["httpGet"]["port"]) for k, p in probes.items()}
    assert paths == {
        "startupProbe": ("/healthz", "metrics"),
        "livenessProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }
    start = probes["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 120  # bcc compiles on a busy node
    assert not any("exec" in p for p in probes.values())  # no process forked per probe


def test_envoy_daemonset_is_probed_through_its_admin_readiness_endpoint(
    rendered: list[dict[str, Any]],
) -> None:
    by_name = _daemonsets(rendered)
    envoy = by_name["l7gate-envoy"]["spec"]["template"]["spec"]
    assert envoy["hostNetwork"]
    (proxy,) = envoy["containers"]
    assert "ports" not in proxy  # nothing exposed: admin listens on the node's loopback only
    args = proxy["args"]
    config = yaml.safe_load(args[args.index("--config-yaml") + 1])
    assert config == bootstrap(
        node_id="$(NODE_NAME)",
        xds_address="unix:/run/l7gate/agent/xds-$(NODE_NAME).sock",
        admin_address="127.0.0.1:9901",
    )
    assert proxy["readinessProbe"]["httpGet"] == {"host": "127.0.0.1", "path": "/ready", "port": 9901}
    assert proxy["livenessProbe"]["tcpSocket"] == {"host": "127.0.0.1", "port": 9901}
    agent = by_name["l7gate-agent"]["spec"]["template"]["spec"]
    shared = {v["name"]: v for v in envoy["volumes"]}["state"]["hostPath"]["path"]
    assert shared == {v["name"]: v for v in agent["volumes"]}["state"]["hostPath"]["path"]


def test_dns_socket_keeper_outlives_the_agent(rendered: list[dict[str, Any]]) -> None:
    """The keeper is its own DaemonSet (a rollout of the agent replaces the agent's whole pod), shares the
    state hostPath with the agent, is never restarted by a probe or a rollout, and the agent's pod starts
    once it answers."""
    by_name = _daemonsets(rendered)
    keeper_ds = by_name["l7gate-dns-keeper"]
    assert keeper_ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    keeper = keeper_ds["spec"]["template"]["spec"]
    assert keeper.get("automountServiceAccountToken") is False and not keeper.get("hostNetwork")
    (container,) = keeper["containers"]
    assert container["args"][:1] == ["socket-keeper"]
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container)
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/run/l7gate"}
    agent_ds = by_name["l7gate-agent"]
    assert agent_ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1}
    agent = agent_ds["spec"]["template"]["spec"]
    (init,) = agent["initContainers"]
    assert init["args"][:1] == ["socket-keeper"] and "--wait" in init["args"]
    host = {v["name"]: v["hostPath"]["path"] for v in keeper["volumes"]}
    assert host == {"state": {v["name"]: v for v in agent["volumes"]}["state"]["hostPath"]["path"]}


def test_cli_options_in_the_manifests_exist(rendered: list[dict[str, Any]]) -> None:
    """Every ``--option`` the DaemonSets pass to ``l7gate`` is an option of that command."""
    register()
    group = typer.main.get_command(app)
    commands = {name: group.get_command(None, name) for name in group.list_commands(None)}  # type: ignore[attr-defined]
    for ds in _daemonsets(rendered).values():
        spec = ds["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            if container["command"] != ["l7gate"]:
                continue
            command = commands[container["args"][0]]
            known = {o for p in command.params for o in p.opts}
            given = {a for a in container["args"] if a.startswith("--")}
            assert given <= known, (container["name"], sorted(given - known))


def test_rbac_is_least_privilege(rendered: list[dict[str, Any]]) -> None:
    (role,) = [o for o in rendered if o["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        writes = set(rule["verbs"]) - {"get", "list", "watch"}
        if writes:
            assert writes == {"patch"}, rule
            assert all(r.endswith("/status") for r in rule["resources"]), rule
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "secrets" not in rule["resources"], rule  # never cluster-wide
    (secrets,) = [o for o in rendered if o["kind"] == "Role"]
    assert secrets["metadata"]["namespace"] == "l7gate-secrets"
    assert secrets["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    (binding,) = [o for o in rendered if o["kind"] == "RoleBinding"]
    assert (binding["metadata"]["namespace"], binding["roleRef"]["name"]) == (
        "l7gate-secrets",
        "l7gate-agent-secrets",
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "l7gate-agent", "namespace": "l7gate-system"}
    ]


def test_every_rbac_rule_is_explained_by_a_comment() -> None:
    lines = (DEPLOY / "kubernetes" / "rbac.yaml").read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rules) == 6
    for i in rules:
        assert lines[i - 1].strip().startswith("#"), f"rbac.yaml:{i + 1}: a rule without a comment"


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


def _properties(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every property of a schema with its path (``spec.egress.toPorts.rules.http``, as kubectl explain)."""
    out = []
    for name, child in (node.get("properties") or {}).items():
        out.append((f"{path}.{name}", child))
        out += _properties(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += _properties(node[key], path)
    return out


def test_every_field_is_explained_in_plain_text() -> None:
    """What ``kubectl explain l7np.spec.egress.toPorts.rules.http`` prints: every field has a description,
    none with reStructuredText or Markdown markup (``literal``, *emphasis*, `code`)."""
    for c in crd.crds():
        (version,) = c["spec"]["versions"]
        fields = _properties(version["schema"]["openAPIV3Schema"], c["spec"]["names"]["shortNames"][0])
        missing = [path for path, node in fields if not node.get("description")]
        assert missing == []
        marked = [(path, n["description"]) for path, n in fields if crd_docs.has_markup(n["description"])]
        assert marked == []
        assert not [p for p, n in fields if "``" in n["description"] or "*every*" in n["description"]]
    http = dict(_properties(crd.object_schema(), "l7np"))["l7np.spec.egress.toPorts.rules.http"]
    assert "HTTP" in http["description"]
    assert "RE2" in http["items"]["properties"]["path"]["description"]


def test_every_field_doc_is_used() -> None:
    used = {
        key
        for path, _ in _properties(crd.rule_schema(), "spec")
        for key in (".".join(path.split(".")[-2:]), path.split(".")[-1])
    }
    assert set(crd_docs.FIELD_DOCS) - used == set()


def test_plain_unwraps_markup() -> None:
    text = "``k8s:`` or `any:` means *every* **namespace**\n  here; a * b and **. stay"
    assert crd_docs.plain(text) == "k8s: or any: means every namespace here; a * b and **. stay"


def test_crds_are_structural_with_status_and_columns() -> None:
    for c in crd.crds():
        (version,) = c["spec"]["versions"]
        assert _structural_problems(version["schema"]["openAPIV3Schema"]) == []
        assert version["subresources"] == {"status": {}}
        columns = [col["name"] for col in version["additionalPrinterColumns"]]
        assert columns == ["Valid", "Enforcing Nodes", "Failing Nodes", "Age"]
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
