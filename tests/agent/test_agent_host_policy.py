"""Host policies (Cilium's host firewall) end to end: a real lab node with its agent and datapath, a
cluster-wide policy with a ``nodeSelector`` applied with ``lab apply``, real traffic.

- pod → node port: the host's ingress policy (from_lxc: the node's addresses are the host endpoint);
- world → node port: the host's ingress policy on the uplink (from_uplink);
- node → pod and node → world: the host's egress policy (to_lxc, to_uplink);
- no host policy (at the start, and after the policy is removed): default allow.

Denied TCP connections must *time out* (the SYN is dropped), not be refused. IPv4 and IPv6. One lab for
the module with a unique name, always taken down in a finalizer; the node's echo server is a process
this test starts and stops.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml
from test_agent_lab_l3 import ECHO_CLIENT, ECHO_SERVER, ECHOED, TIMED_OUT, run_all

from l7 import procs
from l7.lab import Lab, down
from l7.lab import agents as agent_lab
from l7.lab.topology import parse_topology

pytestmark = pytest.mark.root

NAME = f"hst{os.getpid() % 100000}"
NODE_PORTS = (9100, 9101)  # the node's echo server; a host policy allows 9100 only
POD_PORT = 9200  # the pods' echo servers


def topology() -> dict[str, object]:
    server = [sys.executable, "-I", "-c", ECHO_SERVER, f"tcp:{POD_PORT}"]
    return {
        "description": "l7gate host policy test",
        "nodes": [{"name": "n1", "labels": {"role": "edge"}}],
        "namespaces": {"app": {}},
        "pods": [
            {"name": "client", "namespace": "app", "labels": {"app": "client"}, "node": "n1"},
            {"name": "other", "namespace": "app", "labels": {"app": "other"}, "node": "n1"},
            {"name": "web", "namespace": "app", "labels": {"app": "web"}, "node": "n1", "commands": [server]},
            {"name": "db", "namespace": "app", "labels": {"app": "db"}, "node": "n1", "commands": [server]},
        ],
        "world": [{"name": "ext", "ipv4": ["192.168.78.10"], "ipv6": ["fd78:78::10"], "servers": ["http"]}],
    }


def in_netns(netns: str, argv: list[str], timeout: float) -> int:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout, check=False
    ).returncode


def echo_from(netns: str, ip: str, port: int, timeout: float = 1.5) -> int:
    argv = [sys.executable, "-I", "-c", ECHO_CLIENT, "tcp", ip, str(port), str(timeout)]
    return in_netns(netns, argv, timeout + 10)


def curl_from(netns: str, ip: str, timeout: float = 1.5) -> int:
    host = f"[{ip}]" if ":" in ip else ip
    return in_netns(
        netns, ["curl", "-sf", "-o", "/dev/null", "-m", str(timeout), f"http://{host}/"], timeout + 10
    )


def answers(netns: str, ip: str, port: int) -> bool:
    return echo_from(netns, ip, port, 0.5) == ECHOED


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    server: procs.Process | None = None
    try:
        built = Lab.up(parse_topology(topology(), "<test_agent_host_policy>"), NAME)
        node = built.plan.node("n1")
        argv = [sys.executable, "-I", "-c", ECHO_SERVER, *(f"tcp:{p}" for p in NODE_PORTS)]
        server = procs.spawn(["ip", "netns", "exec", node.netns, *argv])
        targets = [(ip, port) for ip in (node.uplink_v4, node.uplink_v6) for port in NODE_PORTS]
        targets += [(ip, POD_PORT) for pod in ("web", "db") for ip in built.pod(pod).ips]
        for ip, port in targets:
            wait_until(partial(answers, node.netns, ip, port), f"echo on {ip} port {port}")
        yield built
    finally:
        if server is not None:
            server.stop()
        down(NAME)


def apply(tmp_path: Path, *docs: dict[str, object]) -> None:
    d = tmp_path / "policies"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    for i, doc in enumerate(docs):
        (d / f"p{i}.yaml").write_text(yaml.safe_dump(doc))
    _, seconds = agent_lab.apply(NAME, d)
    print(f"applied {len(docs)} policies in {seconds:.3f}s")


def ccnp(name: str, spec: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


HOST_INGRESS = ccnp(
    "host-ingress",
    {
        "nodeSelector": {"matchLabels": {"role": "edge"}},
        "ingress": [
            {
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": [{"port": "9100"}]}],
            }
        ],
    },
)
HOST_EGRESS = ccnp(
    "host-egress",
    {
        "nodeSelector": {},
        "egress": [
            {"toEndpoints": [{"matchLabels": {"app": "web"}}], "toPorts": [{"ports": [{"port": "9200"}]}]}
        ],
    },
)


# The client's HTTP to the world goes through the node's Envoy (an L7 rule): Envoy's upstream
# connection leaves the node from the node's address, under the host's egress policy.
CLIENT_HTTP: dict[str, object] = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "client-http", "namespace": "app"},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "client"}},
        "egress": [
            {
                "toEntities": ["world"],
                "toPorts": [
                    {"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}}
                ],
            },
            {"toEntities": ["host", "cluster"]},
        ],
    },
}


def flows(lab: Lab) -> dict[tuple[str, str, int], Callable[[], int]]:
    """(what, address, port) → a check returning the client's exit status, both families."""
    node = lab.plan.node("n1")
    world = lab.plan.world("ext")
    client, other = lab.pod("client"), lab.pod("other")
    out: dict[tuple[str, str, int], Callable[[], int]] = {}
    for family, (uplink, router) in enumerate(
        ((node.uplink_v4, node.router_v4), (node.uplink_v6, node.router_v6))
    ):
        for port in NODE_PORTS:
            out["client→node", router, port] = partial(echo_from, client.netns, router, port)
            out["other→node", router, port] = partial(echo_from, other.netns, router, port)
            out["world→node", uplink, port] = partial(echo_from, world.netns, uplink, port)
        for pod in ("web", "db"):
            ip = lab.pod(pod).ips[family]
            out[f"node→{pod}", ip, POD_PORT] = partial(echo_from, node.netns, ip, POD_PORT)
        ext = world.ips[family]
        out["node→world", ext, 80] = partial(curl_from, node.netns, ext)
        web = lab.pod("web").ips[family]
        out["client→web", web, POD_PORT] = partial(echo_from, client.netns, web, POD_PORT)
        out["client→world (Envoy)", ext, 80] = partial(curl_from, client.netns, ext)
    return out


def outcomes(lab: Lab) -> dict[tuple[str, str, int], str]:
    names = {ECHOED: "ok", TIMED_OUT: "timeout", 28: "timeout"}  # 28: curl timed out (22: HTTP error)
    checks: dict[object, Callable[[], object]] = {k: v for k, v in flows(lab).items()}
    results = run_all(checks)
    return {k: names.get(int(results[k]), f"exit {results[k]}") for k in flows(lab)}


def test_host_policies_enforced_then_default_allow(lab: Lab, tmp_path: Path) -> None:
    # No host policy selects the node: everything is allowed.
    before = outcomes(lab)
    assert set(before.values()) == {"ok"}, before

    # Ingress: only app=client may reach the node, on 9100; egress: the node only to app=web on 9200.
    apply(tmp_path, HOST_INGRESS, HOST_EGRESS, CLIENT_HTTP)
    got = outcomes(lab)
    want = {}
    for what, ip, port in got:
        allowed = {
            "client→node": port == 9100,
            "other→node": False,
            "world→node": False,
            "node→web": True,
            "node→db": False,
            "node→world": False,
            "client→web": True,  # pod to pod through the node is not the host's traffic
            "client→world (Envoy)": True,  # the node's Envoy connects upstream: never cut by a host policy
        }[what]
        want[what, ip, port] = "ok" if allowed else "timeout"
    assert got == want

    # The host policies removed: back to default allow (no host endpoint entry).
    apply(tmp_path, CLIENT_HTTP)
    after = outcomes(lab)
    assert set(after.values()) == {"ok"}, after
