"""Kubernetes → enforcement in a real lab: the fake API server holds the lab's pods, namespaces and nodes
(as a kubelet would report them), the controller (real ``kubernetes`` client) writes the agent inputs,
and the lab's own node agents enforce them on their real datapaths. Real curl from the pods: allowed
connections answer, denied ones time out.

The lab's agents watch ``<lab>/policies`` and ``<lab>/endpoints.json``; the test points both at the
controller's output (symlinks), so the agents run unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fakeapi import FakeAPIServer
from kube_helpers import condition, controller_config, crd_validators, l7np, running_controller, wait_for

from l7.agent import watch
from l7.k8s.controller import Controller, ControllerConfig
from l7.lab import Lab, down
from l7.lab import agents as agent_lab
from l7.lab.topology import parse_topology

pytestmark = pytest.mark.root

NAME = f"kx{os.getpid() % 100000}"
CURL_TIMEOUT = 28


def topology() -> dict[str, object]:
    return {
        "description": "l7gate Kubernetes controller test",
        "nodes": [{"name": "n1"}, {"name": "n2"}],
        "namespaces": {"alpha": {}, "beta": {}, "srv": {}},
        "pods": [
            {"name": "web", "namespace": "srv", "labels": {"app": "web"}, "node": "n1", "server": "http"},
            {"name": "client-a", "namespace": "alpha", "labels": {"app": "client"}, "node": "n2"},
            {"name": "client-b", "namespace": "beta", "labels": {"app": "client"}, "node": "n1"},
        ],
    }


def cluster_objects(lab: Lab) -> dict[str, list[dict[str, Any]]]:
    """The lab's workloads as the API server would hold them."""
    eps = lab.endpoints()
    pods = [
        {
            "metadata": {"name": e["name"], "namespace": e["namespace"], "labels": e["labels"]},
            "spec": {"nodeName": e["node"], "serviceAccountName": e["serviceAccount"], "containers": []},
            "status": {"phase": "Running", "podIP": e["ips"][0], "podIPs": [{"ip": ip} for ip in e["ips"]]},
        }
        for e in eps["endpoints"]
    ]
    namespaces = [{"metadata": {"name": ns, "labels": v["labels"]}} for ns, v in eps["namespaces"].items()]
    nodes = [
        {
            "metadata": {"name": n["name"], "labels": n["labels"]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in n["ips"]]},
        }
        for n in eps["nodes"]
    ]
    return {"pods": pods, "namespaces": namespaces, "nodes": nodes}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    try:
        yield Lab.up(parse_topology(topology(), "<test_kube_lab>"), NAME)
    finally:
        down(NAME)  # the inputs are links to the controller's output: down removes links, not targets


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeAPIServer, Controller]]:
    server = FakeAPIServer(bookmark_interval=0.5, watch_cap=5, validators=crd_validators()).start()
    try:
        for plural, objects in cluster_objects(lab).items():
            for obj in objects:
                server.create(plural, obj)
        directory = tmp_path_factory.mktemp("kx-controller")
        cfg = controller_config(
            directory, "n1", agent_status=agent_lab.status_file(lab.state, "n1"), status_interval=0.3
        )
        with running_controller(server, cfg) as controller:
            point_lab_at(lab, cfg)
            wait_applied(lab, controller)
            yield server, controller
    finally:
        server.close()


def point_lab_at(lab: Lab, cfg: ControllerConfig) -> None:
    """The lab's agents read the controller's output from now on (atomic symlink swaps)."""
    for link, target in (
        (agent_lab.policies_link(lab.state), cfg.policies),
        (lab.state.directory / "endpoints.json", cfg.endpoints),
    ):
        tmp = link.with_name(f".{link.name}.kx")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)


def wait_applied(lab: Lab, controller: Controller, timeout: float = 20.0) -> None:
    """Both node agents report the controller's current policy set and endpoints file applied."""
    cfg = controller.cfg
    deadline = time.monotonic() + timeout
    while True:
        policies = watch.content_hash(cfg.policies)
        endpoints = watch.content_hash(cfg.endpoints)
        expects = [
            watch.Expect(agent_lab.status_file(lab.state, n), None, policies, endpoints) for n in ("n1", "n2")
        ]
        try:
            watch.wait_status(expects, max(0.1, deadline - time.monotonic()))
        except watch.WaitError:
            if time.monotonic() > deadline:
                raise
            continue
        if watch.content_hash(cfg.policies) == policies and watch.content_hash(cfg.endpoints) == endpoints:
            return


def settle(lab: Lab, controller: Controller) -> None:
    """Wait until the controller has written what the server holds now and both agents applied it."""
    changes = -1
    while changes != controller.store.changes:  # no event for a while: the controller saw everything
        changes = controller.store.changes
        time.sleep(0.3)
    wait_applied(lab, controller)


def curl(lab: Lab, pod: str, ip: str) -> tuple[int, str]:
    out = lab.exec(pod, ["curl", "-s", "-m", "2", f"http://{ip}/"], timeout=12)
    return out.returncode, out.stdout


def reach(lab: Lab, pods: list[str]) -> dict[str, int]:
    ip = lab.pod("web").ips[0]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {p: pool.submit(curl, lab, p, ip) for p in pods}
        results = {p: f.result() for p, f in futures.items()}
    for rc, body in results.values():
        assert rc != 0 or "Hello from web" in body, body
    return {p: rc for p, (rc, _) in results.items()}


ALLOW_FROM_ALPHA = {
    "endpointSelector": {"matchLabels": {"app": "web"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "alpha"}}]}],
}
ALLOW_GOLD = {
    "endpointSelector": {"matchLabels": {"app": "web"}},
    "ingress": [
        {"fromEndpoints": [{"matchLabels": {"tier": "gold", "k8s:io.kubernetes.pod.namespace": "beta"}}]}
    ],
}


def test_policy_and_pod_changes_change_enforcement(
    lab: Lab, cluster: tuple[FakeAPIServer, Controller]
) -> None:
    server, controller = cluster
    assert reach(lab, ["client-a", "client-b"]) == {"client-a": 0, "client-b": 0}

    # a policy: only namespace alpha may reach web
    server.create("l7networkpolicies", l7np("web-from-alpha", "srv", ALLOW_FROM_ALPHA))
    obj = wait_for(
        "Enforced=True",
        lambda: (
            (c := condition(server.get("l7networkpolicies", "web-from-alpha", "srv"), "Enforced"))
            and c["status"] == "True"
            and server.get("l7networkpolicies", "web-from-alpha", "srv")
        ),
        timeout=20,
    )
    assert (obj["status"]["enforcingNodes"], obj["status"]["failingNodes"]) == (1, 0)
    settle(lab, controller)
    assert reach(lab, ["client-a", "client-b"]) == {"client-a": 0, "client-b": CURL_TIMEOUT}

    # an invalid policy beside it: Valid=False with field paths, the valid one keeps working
    bad = {"endpointSelector": {}, "egress": [{"toCIDR": ["10.0.0.0/33"]}]}
    server.create("l7networkpolicies", l7np("broken", "srv", bad))
    wait_for(
        "Valid=False",
        lambda: (
            (c := condition(server.get("l7networkpolicies", "broken", "srv"), "Valid"))
            and c["status"] == "False"
            and "spec.egress[0].toCIDR[0]" in c["message"]
        ),
    )
    settle(lab, controller)
    assert reach(lab, ["client-a", "client-b"]) == {"client-a": 0, "client-b": CURL_TIMEOUT}

    # update the policy to admit tier=gold in beta, then label the pod: a pod update opens the way
    policy = server.get("l7networkpolicies", "web-from-alpha", "srv")
    policy["spec"] = ALLOW_GOLD
    server.update("l7networkpolicies", policy)
    settle(lab, controller)
    assert reach(lab, ["client-a", "client-b"]) == {"client-a": CURL_TIMEOUT, "client-b": CURL_TIMEOUT}
    pod = server.get("pods", "client-b", "beta")
    pod["metadata"]["labels"] = {"app": "client", "tier": "gold"}
    server.update("pods", pod)
    settle(lab, controller)
    assert reach(lab, ["client-a", "client-b"]) == {"client-a": CURL_TIMEOUT, "client-b": 0}

    # the pod deleted from the API: its address is no longer a gold pod (world), denied again
    server.delete("pods", "client-b", "beta")
    settle(lab, controller)
    assert reach(lab, ["client-b"]) == {"client-b": CURL_TIMEOUT}

    # policies deleted: everything flows again
    server.delete("l7networkpolicies", "web-from-alpha", "srv")
    server.delete("l7networkpolicies", "broken", "srv")
    settle(lab, controller)
    assert reach(lab, ["client-a", "client-b"]) == {"client-a": 0, "client-b": 0}
