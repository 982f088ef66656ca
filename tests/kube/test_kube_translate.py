"""The pure parts of Kubernetes support: status conditions, pods → endpoints, objects → documents."""

from __future__ import annotations

from typing import Any

from kube_helpers import pod

from l7.k8s.endpoints import endpoints_document, endpoints_file
from l7.k8s.policies import L7CCNP, L7NP, FieldError, translate
from l7.k8s.secrets import secret_value, secret_values
from l7.k8s.status import NodeEnforcement, desired_status, status_patch

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def obj_with(status: dict[str, Any] | None, rv: str = "7") -> dict[str, Any]:
    out: dict[str, Any] = {"metadata": {"name": "p", "namespace": "a", "resourceVersion": rv}}
    if status is not None:
        out["status"] = status
    return out


def test_status_written_once_then_unchanged() -> None:
    desired = desired_status(
        None, "n1", generation=1, errors=(), view=NodeEnforcement(True), known_nodes={"n1"}, now=T0
    )
    patch = status_patch(obj_with(None), desired)
    assert patch is not None and patch["metadata"] == {"resourceVersion": "7"}
    assert desired["enforcingNodes"] == 1
    assert [(c["type"], c["status"]) for c in desired["conditions"]] == [
        ("Valid", "True"),
        ("Enforced", "True"),
    ]
    # the same facts a minute later: times kept, nothing to write
    again = desired_status(
        desired, "n1", generation=1, errors=(), view=NodeEnforcement(True), known_nodes={"n1"}, now=T1
    )
    assert again == desired
    assert status_patch(obj_with(desired, "8"), again) is None


def test_invalid_lists_every_error_with_its_path() -> None:
    errors = (FieldError("spec.egress[0].toCIDR[0]", "bad prefix"), FieldError("spec.ingress", "bad"))
    desired = desired_status(
        None, "n1", generation=3, errors=errors, view=NodeEnforcement(None), known_nodes=None, now=T0
    )
    valid, enforced = desired["conditions"]
    assert valid["status"] == "False" and valid["reason"] == "Invalid"
    assert valid["message"] == "spec.egress[0].toCIDR[0]: bad prefix; spec.ingress: bad"
    assert enforced["status"] == "False" and enforced["reason"] == "Invalid"
    assert desired["errors"] == [
        {"path": "spec.egress[0].toCIDR[0]", "message": "bad prefix"},
        {"path": "spec.ingress", "message": "bad"},
    ]
    assert desired["nodes"]["n1"]["enforced"] is False


def test_two_nodes_summary_and_transition_times() -> None:
    one = desired_status(
        None, "n1", generation=2, errors=(), view=NodeEnforcement(True), known_nodes={"n1", "n2"}, now=T0
    )
    both = desired_status(
        one,
        "n2",
        generation=2,
        errors=(),
        view=NodeEnforcement(False, "agent: boom"),
        known_nodes={"n1", "n2"},
        now=T1,
    )
    assert both["enforcingNodes"] == 1
    enforced = both["conditions"][1]
    assert enforced["status"] == "False" and enforced["reason"] == "Failed"
    assert "1/2 nodes" in enforced["message"] and "n2: agent: boom" in enforced["message"]
    assert enforced["lastTransitionTime"] == T1  # True → False
    assert both["conditions"][0]["lastTransitionTime"] == T0  # Valid stayed True
    # n2 leaves the cluster: its entry is deleted (merge patch null), the summary is 1/1
    after = desired_status(
        both, "n1", generation=2, errors=(), view=NodeEnforcement(True), known_nodes={"n1"}, now=T1
    )
    assert after["nodes"]["n2"] is None and after["enforcingNodes"] == 1
    assert after["conditions"][1]["status"] == "True"


def test_stale_generation_does_not_count() -> None:
    old = desired_status(
        None, "n1", generation=1, errors=(), view=NodeEnforcement(True), known_nodes=None, now=T0
    )
    pending = desired_status(
        old, "n1", generation=2, errors=(), view=NodeEnforcement(None), known_nodes=None, now=T1
    )
    assert pending["enforcingNodes"] == 0
    assert pending["conditions"][1]["reason"] == "Pending"


def test_pods_to_endpoints() -> None:
    pods = [
        pod("web", "shop", "10.0.0.1", "n1", {"app": "web"}),
        {**pod("old", "shop", "10.0.0.2", "n1", {"app": "x"})},
        pod("done", "shop", "10.0.0.3", "n1", {}),
        pod("hostnet", "shop", "192.168.0.1", "n1", {}, hostNetwork=True),
        {"metadata": {"name": "pending", "namespace": "shop"}, "spec": {}, "status": {"phase": "Pending"}},
    ]
    pods[1]["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    new = pod("new", "shop", "10.0.0.2", "n2", {"app": "y"})
    new["metadata"]["creationTimestamp"] = "2026-01-02T00:00:00Z"
    pods.append(new)
    pods[2]["status"]["phase"] = "Succeeded"
    doc = endpoints_document(pods, [{"metadata": {"name": "shop", "labels": {"t": "1"}}}], [], [])
    by_name = {e["name"]: e for e in doc["endpoints"]}
    assert sorted(by_name) == ["new", "web"]  # old lost its IP to the newer pod, done/hostnet/pending skipped
    assert by_name["new"]["ips"] == ["10.0.0.2"]
    assert endpoints_file(pods, [], [], []).endpoints  # and the agent's parser accepts it


def test_document_drops_server_fields_and_keeps_paths() -> None:
    obj = {
        "apiVersion": "l7gate.io/v1alpha1",
        "kind": "L7ClusterwideNetworkPolicy",
        "metadata": {"name": "cw", "uid": "x", "resourceVersion": "3", "generation": 4, "managedFields": []},
        "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["nonsense"]}]},
        "status": {"conditions": []},
    }
    t = translate(L7CCNP, obj)
    assert (
        t.namespace is None and t.generation == 4 and t.file == "L7ClusterwideNetworkPolicy/_cluster/cw.yaml"
    )
    assert t.text is None and [e.path for e in t.errors] == ["spec.ingress[0].fromEntities[0]"]
    ok = translate(L7NP, {"metadata": {"name": "p"}, "spec": {"endpointSelector": {}}})
    assert ok.errors == () and ok.namespace == "default" and ok.text is not None


def test_secret_values() -> None:
    one = {"data": {"k": "czNjcmV0"}}
    assert secret_value(one) == "s3cret"
    assert secret_value({"data": {"a": "eA==", "b": "eQ=="}}) is None  # more than one entry: ambiguous
    assert secret_value({"data": {"a": "not base64!"}}) is None
    values = secret_values([(None, "k"), ("shop", "gone")], {("default", "k"): one, ("shop", "gone"): None})
    assert values == {("default", "k"): "s3cret"}
