"""Pods cannot reach the node's proxy ports directly (issue 11, finding 5), through a real lab.

One node with its agent, Envoy and DNS proxy: ``service-pod`` (nginx-like ``/public`` and ``/private``),
``client-prod`` (``env: prod``) and kube-dns. Policies: seed 002's L7 rule (``GET /public`` from
``env: prod`` to ``app: service``) and, for the client, DNS through the proxy plus *everything* to the
host — so the policy would allow a direct connection to the node; the datapath drops it anyway
(``DROP_PROXY_PORT_DIRECT``). The client's redirected HTTP requests still get 200 and 403 from Envoy and
its DNS queries still get answers from the DNS proxy. Only the ports the proxies use are protected
(the agent writes them to ``l7g_proxy_ports``): a node service on kubelet's 10250 — inside the range
proxy ports are chosen from — answers the same client on the same node addresses, v4 and v6.

The agent's ordering is checked against a fake datapath too: every proxy port is protected before the
services' ``prepare`` (a proxy listens, then redirects are written), and a port an earlier agent
protected that is no longer a proxy port is released only after the services' ``commit``.

One lab per module, named ``l7gsd-…``, always taken down in a finalizer; traffic only inside the lab.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpf.maps import Action
from l7.agent.envoy_files import EnvoyRecord, listening_ports
from l7.agent.node import Agent
from l7.agent.services import AppliedView, ServiceHost
from l7.lab import Lab, down
from l7.lab import agents as agent_lab
from l7.lab.topology import parse_topology
from l7.plan.datapath import NODE_SERVICE_PORTS, PROXY_PORT_MAX, PROXY_PORT_MIN
from tests.agent import fqdn_helpers as fh
from tests.agent.agent_helpers import SEEDS, FakeDatapath, seed_002_agent_config
from tests.agent.test_agent_http import envoy_records
from tests.datapath import netlab

pytestmark = pytest.mark.root

NAME = f"l7gsd-pp{os.getpid() % 100000}"
KUBELET_PORT = 10250
NODE = "n1"
PUBLIC_PAGE = "<html><body><h1>Hello from /public</h1></body></html>\n"

# Sends a TCP connect and a UDP datagram (a DNS query for kube-dns.test) to ip:port; prints
# "<tcp result> <udp result>": ok (connected / got a reply), timeout, refused, error.
PROBE = r"""
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
def tcp():
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1.5)
    try:
        s.connect((ip, port)); return "ok"
    except TimeoutError: return "timeout"
    except ConnectionRefusedError: return "refused"
    except OSError as e: return f"error:{e.errno}"
    finally: s.close()
def udp():
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1.5)
    q = bytes.fromhex("abcd01000001000000000000") + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    try:
        s.sendto(q, (ip, port)); s.recvfrom(2048); return "ok"
    except TimeoutError: return "timeout"
    except ConnectionRefusedError: return "refused"
    except OSError as e: return f"error:{e.errno}"
    finally: s.close()
print(tcp(), udp())
"""


def topology() -> dict[str, Any]:
    return {
        "description": "l7gate proxy-port lab: one node, an L7 server, a client, kube-dns",
        "nodes": [{"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}],
        "pods": [
            {
                "name": "service-pod",
                "labels": {"app": "service"},
                "node": NODE,
                "ports": {"http": 80},
                "server": {
                    "kind": "http",
                    "paths": {"/public": PUBLIC_PAGE, "/private": "private\n"},
                },
            },
            {"name": "client-prod", "labels": {"env": "prod"}, "node": NODE},
        ],
        "dns": {"node": NODE, "ttl": 30},
    }


def client_policy() -> dict[str, Any]:
    return fh.cnp(
        "client-prod",
        "default",
        {
            "endpointSelector": {"matchLabels": {"env": "prod"}},
            "egress": [
                fh.dns_to("kube-dns"),
                {"toEndpoints": [{"matchLabels": {"app": "service"}}]},
                {"toEntities": ["host"]},
            ],
        },
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("proxyports")
    records: dict[str, EnvoyRecord] = {}
    try:
        built = Lab.up(parse_topology(topology(), "<test_agent_proxy_ports>"), NAME)
        fh.apply(NAME, tmp, fh.seed("002-allow-public-from-prod", "default"), client_policy())
        deadline = time.monotonic() + 30
        while not (records := envoy_records(built)) and time.monotonic() < deadline:
            time.sleep(0.2)
        yield built
    finally:
        down(NAME)
        left = [r.pid for r in records.values() if r.alive()]
        assert not left, f"Envoy left running after lab down: {left}"


def in_range(port: int) -> bool:
    return PROXY_PORT_MIN <= port <= PROXY_PORT_MAX


def envoy_ports(lab: Lab) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = envoy_records(lab).get(NODE)
        ports = sorted({p for _, p in listening_ports(record.pid)} if record else set())
        ports = [p for p in ports if in_range(p)]
        if ports:
            return ports
        time.sleep(0.2)
    raise AssertionError("Envoy has no listener on a proxy port")


def dns_ports(lab: Lab) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ports = [int(p) for p in fh.agent_status(lab, NODE)["services"]["dns"]["ports"]]
        if ports:
            return ports
        time.sleep(0.2)
    raise AssertionError("the DNS proxy has no port")


def node_addresses(lab: Lab) -> list[str]:
    node = lab.plan.node(NODE)
    return [node.router_v4, node.router_v6, node.uplink_v4, node.uplink_v6]


def probe(lab: Lab, ip: str, port: int) -> tuple[str, str]:
    out = fh.run(lab, "default/client-prod", ["python3", "-I", "-c", PROBE, ip, str(port)], timeout=20)
    assert out.returncode == 0, out.stderr
    tcp, udp = out.stdout.split()
    return tcp, udp


def test_redirected_traffic_works(lab: Lab) -> None:
    service = lab.pod("default/service-pod").ips[0]
    out = fh.run(lab, "default/client-prod", ["curl", "-s", "-m", "3", f"http://{service}/public"])
    assert out.returncode == 0 and out.stdout == PUBLIC_PAGE, out
    out = fh.run(
        lab,
        "default/client-prod",
        ["curl", "-s", "-m", "3", "-w", "%{http_code}", "-o", "/dev/null", f"http://{service}/private"],
    )
    assert out.stdout == "403", out
    rc, text = fh.dig(lab, "default/client-prod", "www.example.com")
    assert rc == 0 and fh.status_of(text) in ("NOERROR", "NXDOMAIN"), text


@pytest.mark.parametrize("kind", ["envoy", "dns"])
def test_direct_connections_to_proxy_ports_time_out(lab: Lab, kind: str) -> None:
    ports = envoy_ports(lab) if kind == "envoy" else dns_ports(lab)
    assert all(in_range(p) for p in ports), ports
    results = {(ip, port): probe(lab, ip, port) for ip in node_addresses(lab) for port in ports}
    assert all(r == ("timeout", "timeout") for r in results.values()), results
    # ... and the redirected requests through the same proxies go on working.
    test_redirected_traffic_works(lab)


def test_direct_drops_are_logged_with_their_reason(lab: Lab) -> None:
    port = envoy_ports(lab)[0]
    probe(lab, lab.plan.node(NODE).router_v4, port)
    flows = agent_lab.agent_dir(lab.state) / f"flows-{NODE}-l3l4.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if flows.exists() and any(
            "PROXY_PORT_DIRECT" in line.upper().replace("-", "_") and str(port) in line
            for line in flows.read_text().splitlines()
        ):
            return
        time.sleep(0.3)
    raise AssertionError(f"no PROXY_PORT_DIRECT drop for port {port} in {flows}")


def test_node_service_in_the_range_reachable_while_proxy_ports_are_not(lab: Lab) -> None:
    """kubelet's port on the node's router and uplink addresses (v4, v6) answers the client over TCP
    and UDP — the client's policy allows the host, as metrics-server's would — while the proxies'
    ports on the same addresses time out."""
    assert in_range(KUBELET_PORT) and KUBELET_PORT in NODE_SERVICE_PORTS
    proxies = sorted(set(envoy_ports(lab) + dns_ports(lab)))  # before our server listens in the node
    assert KUBELET_PORT not in proxies
    node = lab.plan.node(NODE)
    kubelet = netlab.EchoServer(node.netns, (KUBELET_PORT,), (KUBELET_PORT,))
    try:
        for ip in node_addresses(lab):
            assert probe(lab, ip, KUBELET_PORT) == ("ok", "ok"), ip  # TCP connect, UDP echoed
            results = {port: probe(lab, ip, port) for port in proxies}
            assert all(r == ("timeout", "timeout") for r in results.values()), (ip, results)
    finally:
        kubelet.close()


# ------------------------------------------------------------------------ ordering (fake datapath)
class RecordingService:
    """Records what the datapath protects when the agent calls the services."""

    name = "recorder"

    def __init__(self, dp: FakeDatapath) -> None:
        self.dp = dp
        self.at_prepare: list[tuple[set[int], set[tuple[int, int]], int]] = []
        self.at_commit: list[set[tuple[int, int]]] = []

    def start(self, host: ServiceHost) -> None:
        pass

    def prepare(self, view: AppliedView) -> None:
        used = {view.ports[key] for key in view.unions}
        redirects = sum(
            1 for entries in self.dp.pol.values() for v in entries.values() if v.action == Action.REDIRECT
        )
        self.at_prepare.append((used, self.dp.proxy_ports(), redirects))

    def commit(self, view: AppliedView) -> None:
        self.at_commit.append(self.dp.proxy_ports())

    def status(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        pass


def test_agent_protects_before_prepare_and_releases_after_commit(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(SEEDS / "002-allow-public-from-prod.yaml", policies)
    dp = FakeDatapath()
    stale = (12345, 6)  # protected by an earlier agent; no longer one of the node's proxy ports
    dp.proxy.add(stale)
    recorder = RecordingService(dp)

    cfg = seed_002_agent_config(tmp_path, policies)
    agent = Agent(cfg, open_datapath=lambda _name: dp, services=[recorder])
    agent.start()
    try:
        assert agent.step()
    finally:
        agent.close()
    [(used, protected, redirects)] = recorder.at_prepare
    assert used and redirects == 0
    assert {(port, proto) for port in used for proto in (6, 17)} <= protected  # before anyone listens
    assert stale in recorder.at_commit[0]  # still protected while the services let go
    assert dp.proxy == agent.ports.protected() and stale not in dp.proxy
    redirect_ports = {
        v.proxy_port for e in dp.pol.values() for v in e.values() if v.action == Action.REDIRECT
    }
    assert redirect_ports and {(p, 6) for p in redirect_ports} <= dp.proxy
