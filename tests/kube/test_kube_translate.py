"""The pure parts of Kubernetes support: pods → endpoints, objects → documents (status: test_kube_status)."""

from __future__ import annotations

from kube_helpers import pod

from l7.k8s.endpoints import endpoints_document, endpoints_file
from l7.k8s.policies import L7CCNP, L7NP, translate
from l7.k8s.secrets import secret_value, secret_values


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
