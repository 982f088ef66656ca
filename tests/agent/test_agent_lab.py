"""The node agents in a real lab (seed 002's three nodes): enforcement of seed policies, ``lab apply``,
IPv6, an agent killed with SIGKILL (enforcement stays) and restarted (it adopts the pinned state).

One lab per module with a unique name; it is always taken down in a finalizer. Traffic goes only to the
lab's own addresses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import REPO, SEED_002_LAB, SEEDS, wait_for

from l7.lab import Lab, down, procs
from l7.lab import agents as agent_lab

pytestmark = pytest.mark.root

NAME = f"ag{os.getpid() % 100000}"
L7GATE = str(REPO / ".venv" / "bin" / "l7gate")

PROD_TO_SERVICE_80 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prod-to-service-80}
spec:
  endpointSelector: {matchLabels: {app: service}}
  ingress:
  - fromEndpoints: [{matchLabels: {env: prod}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    started = time.monotonic()
    try:
        built = Lab.up(SEED_002_LAB, NAME)
        print(f"lab up with agents: {time.monotonic() - started:.2f}s (lab alone {built.state.up_seconds}s)")
        yield built
    finally:
        down(NAME)
        assert not (agent_lab.PIN_ROOT / f"l7g-{NAME}-k8s-w1").exists()


def policy_dir(tmp_path: Path, *seeds: str, extra: str | None = None) -> Path:
    d = tmp_path / "policies"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for s in seeds:
        shutil.copy(SEEDS / f"{s}.yaml", d)
    if extra is not None:
        (d / "extra.yaml").write_text(extra)
    return d


def apply(tmp_path: Path, *seeds: str, extra: str | None = None) -> float:
    _, seconds = agent_lab.apply(NAME, policy_dir(tmp_path, *seeds, extra=extra))
    return seconds


def ok(lab: Lab, pod: str, argv: list[str]) -> bool:
    return lab.exec(pod, argv, timeout=10).returncode == 0


def ping(lab: Lab, pod: str, ip: str) -> bool:
    return ok(lab, pod, ["ping", "-6" if ":" in ip else "-4", "-c1", "-W1", "-q", ip])


def curl(lab: Lab, pod: str, ip: str, path: str = "/") -> bool:
    host = f"[{ip}]" if ":" in ip else ip
    return ok(
        lab,
        pod,
        ["curl", "-sf", "-o", "/dev/null", "--connect-timeout", "1", "-m", "2", f"http://{host}{path}"],
    )


def ips(lab: Lab, pod: str) -> list[str]:
    return lab.pod(pod).ips


def routers(lab: Lab, node: str) -> list[str]:
    n = lab.plan.node(node)
    return [n.router_v4, n.router_v6]


def test_agents_ready_and_recorded(lab: Lab) -> None:
    agents = agent_lab.agent_records(lab.state)
    assert set(agents) == {"k8s-ctr", "k8s-w1", "k8s-w2"}
    for node, rec in agents.items():
        assert procs.alive(rec)
        assert rec.argv[:2] == ["nsenter", f"--net=/run/netns/{lab.node_netns(node)}"]
        status = json.loads(agent_lab.status_file(lab.state, node).read_text())
        assert status["ready"] and status["pid"] == rec.pid and not status["errors"]
        print(f"agent {node}: start → ready {status['ready_seconds']}s")
        assert (agent_lab.PIN_ROOT / lab.node_netns(node)).is_dir()


def test_no_policy_everything_connects(lab: Lab) -> None:
    for ip in ips(lab, "service-pod"):
        assert curl(lab, "client-prod", ip, "/public")
        assert curl(lab, "client-dev", ip, "/public")
    for ip in [*routers(lab, "k8s-w1"), *routers(lab, "k8s-ctr"), *ips(lab, "webpod-2")]:
        assert ping(lab, "dev-pod", ip), ip
    assert curl(lab, "dev-pod", ips(lab, "webpod-2")[0])


def test_default_deny_dev_reaches_only_its_node(lab: Lab, tmp_path: Path) -> None:
    seconds = apply(tmp_path, "002-default-deny-dev", "002-dev-to-host")
    print(f"apply → enforced on every node: {seconds:.3f}s")
    for ip in routers(lab, "k8s-w1"):  # dev-pod's own node, IPv4 and IPv6
        assert ping(lab, "dev-pod", ip), ip
    for ip in [*routers(lab, "k8s-ctr"), *routers(lab, "k8s-w2")]:
        assert not ping(lab, "dev-pod", ip), ip
    for ip in ips(lab, "webpod-2"):  # a pod on another node: denied over IPv4 and IPv6
        assert not curl(lab, "dev-pod", ip), ip
    assert not curl(lab, "dev-pod", ips(lab, "webpod-1")[1])  # same node, IPv6
    assert ping(lab, "client-dev", routers(lab, "k8s-w2")[0])  # client-dev lives on k8s-w2
    assert not ping(lab, "client-dev", routers(lab, "k8s-w1")[0])
    # other pods are not selected
    assert curl(lab, "client-prod", ips(lab, "service-pod")[1], "/public")
    assert ping(lab, "mediabot", routers(lab, "k8s-ctr")[0])


def test_apply_dev_to_remote_node_opens_other_nodes(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path, "002-default-deny-dev", "002-dev-to-host", "002-dev-to-remote-node")
    for ip in [*routers(lab, "k8s-ctr"), *routers(lab, "k8s-w2"), *routers(lab, "k8s-w1")]:
        assert ping(lab, "dev-pod", ip), ip
    assert not curl(lab, "dev-pod", ips(lab, "webpod-2")[0])  # pods are not nodes


def test_invalid_apply_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    before = os.readlink(agent_lab.policies_link(lab.state))
    bad = policy_dir(tmp_path, "002-default-deny-dev", extra=PROD_TO_SERVICE_80.replace("toPorts", "toPortz"))
    out = subprocess.run(
        [L7GATE, "lab", "apply", "--name", NAME, str(bad)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 1, out
    assert "spec.ingress[0].toPortz" in out.stderr
    assert os.readlink(agent_lab.policies_link(lab.state)) == before
    assert ping(lab, "dev-pod", routers(lab, "k8s-ctr")[0])  # the previous set still applies


def test_l3_l4_allow_by_label(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path, extra=PROD_TO_SERVICE_80)
    for ip in ips(lab, "service-pod"):  # client-prod (k8s-w2) → service-pod (k8s-w1): replies pass
        assert curl(lab, "client-prod", ip, "/public"), ip
        assert not curl(lab, "client-dev", ip, "/public"), ip
        assert not ping(lab, "client-prod", ip), ip  # TCP 80 only
    # dev-pod, on service-pod's own node, is denied too (local delivery)
    assert not curl(lab, "dev-pod", ips(lab, "service-pod")[0], "/public")
    # the previous dev policies are gone: dev-pod reaches other pods again
    assert curl(lab, "dev-pod", ips(lab, "webpod-2")[0])


def _pinned(lab: Lab, node: str) -> dict[str, object]:
    out = {}
    for m in ("policy", "ipcache", "endpoints", "endpoint_ids", "devices"):
        path = agent_lab.PIN_ROOT / lab.node_netns(node) / m
        dump = subprocess.run(
            ["bpftool", "-j", "map", "dump", "pinned", str(path)], capture_output=True, text=True, check=True
        )
        out[m] = sorted(json.dumps(e, sort_keys=True) for e in json.loads(dump.stdout))
    return out


def test_sigkill_keeps_enforcing_and_restart_adopts(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path, extra=PROD_TO_SERVICE_80)
    service = ips(lab, "service-pod")
    before = _pinned(lab, "k8s-w1")
    results: list[bool] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            results.append(curl(lab, "client-prod", service[0], "/public"))
            time.sleep(0.05)

    flow = threading.Thread(target=traffic)
    flow.start()
    try:
        wait_for("requests before the kill", lambda: len(results) >= 3)
        rec = agent_lab.agent_records(lab.state)["k8s-w1"]
        os.kill(rec.pid, signal.SIGKILL)  # the agent this lab started (recorded pid)
        deadline = time.monotonic() + 5
        while procs.alive(rec) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not procs.alive(rec)
        after = len(results)
        wait_for("requests while no agent runs", lambda: len(results) >= after + 5)
    finally:
        stop.set()
        flow.join()
    assert results and all(results), results
    for ip in service:
        assert curl(lab, "client-prod", ip, "/public")
        assert not curl(lab, "client-dev", ip, "/public")
    assert _pinned(lab, "k8s-w1") == before

    new, seconds = agent_lab.restart_agent(NAME, "k8s-w1")
    print(f"restarted agent: ready in {seconds:.2f}s")
    status = json.loads(agent_lab.status_file(lab.state, "k8s-w1").read_text())
    assert status["pid"] == new.pid
    changes = {k: v for k, v in status["last_apply"].items() if k not in ("seconds", "missing")}
    assert not any(changes.values()), changes  # adopted: nothing written, nothing flushed
    assert _pinned(lab, "k8s-w1") == before
    assert curl(lab, "client-prod", service[1], "/public")
    assert not curl(lab, "client-dev", service[1], "/public")
    # the restarted agent is recorded: a later apply reaches it and `down` stops it
    apply(tmp_path)
    assert curl(lab, "client-dev", service[0], "/public")
