"""L3/L4 policies end to end: a real lab (two nodes, pods in three namespaces, two world hosts) with its
node agents and datapaths, policies applied with ``lab apply``, real traffic from inside the pods.

Covers: allow by namespace (``k8s:io.kubernetes.pod.namespace``), ``toCIDRSet`` with ``except`` towards
world hosts, ``toEntities: [world]``, ``egressDeny`` beating an allow, ``toPorts`` with ``endPort`` and
TCP vs UDP. Denied TCP connections must *time out* (the SYN is dropped), not be refused.

One lab per module with a unique name, always taken down in a finalizer. The world hosts' addresses are
pinned in the topology (private, routed only inside the lab); traffic goes only to the lab's addresses.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from l7.lab import Lab, down
from l7.lab import agents as agent_lab
from l7.lab.topology import parse_topology

pytestmark = pytest.mark.root

NAME = f"l3e{os.getpid() % 100000}"

TCP_PORTS = (9000, 9001, 9003, 9004, 9005)
UDP_PORTS = (9000, 9005)

# A TCP and UDP echo server (dual-stack), run as a pod command: argv = tcp:PORT / udp:PORT ...
ECHO_SERVER = r"""
import socket, sys, threading
def serve(c):
    with c:
        while True:
            d = c.recv(65535)
            if not d:
                return
            c.sendall(d)
def tcp(p):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", p)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp(p):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", p))
    while True:
        d, a = s.recvfrom(65535)
        s.sendto(d, a)
for arg in sys.argv[1:]:
    kind, port = arg.split(":")
    threading.Thread(target=tcp if kind == "tcp" else udp, args=(int(port),), daemon=True).start()
threading.Event().wait()
"""

# Exit status: 0 = echoed, 3 = timed out (dropped), 4 = refused or another error.
ECHO_CLIENT = r"""
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[4]))
try:
    if proto == "tcp":
        s.connect((ip, port)); s.sendall(b"l7gate"); ok = s.recv(100) == b"l7gate"
    else:
        s.sendto(b"l7gate", (ip, port)); ok = s.recvfrom(100)[0] == b"l7gate"
except TimeoutError:
    sys.exit(3)
except OSError:
    sys.exit(4)
sys.exit(0 if ok else 4)
"""
ECHOED, TIMED_OUT = 0, 3
CURL_TIMEOUT = 28


def topology() -> dict[str, object]:
    return {
        "description": "l7gate L3/L4 end-to-end test",
        "nodes": [{"name": "n1"}, {"name": "n2"}],
        "namespaces": {"alpha": {}, "beta": {}, "srv": {}},
        "pods": [
            {"name": "web", "namespace": "srv", "labels": {"app": "web"}, "node": "n1", "server": "http"},
            {
                "name": "echo",
                "namespace": "srv",
                "labels": {"app": "echo"},
                "node": "n1",
                "commands": [
                    [
                        sys.executable,
                        "-I",
                        "-c",
                        ECHO_SERVER,
                        *(f"tcp:{p}" for p in TCP_PORTS),
                        *(f"udp:{p}" for p in UDP_PORTS),
                    ]
                ],
            },
            {"name": "peer", "namespace": "srv", "labels": {"app": "peer"}, "node": "n2"},
            {"name": "client-a", "namespace": "alpha", "labels": {"app": "client"}, "node": "n2"},
            {"name": "client-b", "namespace": "beta", "labels": {"app": "client"}, "node": "n1"},
        ],
        "world": [
            # both inside 192.168.77.0/24 (and fd77:77::/64); "excepted" inside the except block /25
            {"name": "inside", "ipv4": ["192.168.77.10"], "ipv6": ["fd77:77::10"], "servers": ["http"]},
            {"name": "excepted", "ipv4": ["192.168.77.200"], "ipv6": ["fd77:77::200"], "servers": ["http"]},
        ],
    }


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    started = time.monotonic()
    try:
        built = Lab.up(parse_topology(topology(), "<test_agent_lab_l3>"), NAME)
        print(f"lab up with agents: {time.monotonic() - started:.2f}s")
        wait_echo_ready(built)
        yield built
    finally:
        down(NAME)


# ------------------------------------------------------------------------------------------- helpers
def echo(lab: Lab, pod: str, proto: str, ip: str, port: int, *, timeout: float = 2.0) -> int:
    argv = [sys.executable, "-I", "-c", ECHO_CLIENT, proto, ip, str(port), str(timeout)]
    return lab.exec(pod, argv, timeout=timeout + 10).returncode


def curl(lab: Lab, pod: str, ip: str, port: int = 80) -> tuple[int, str]:
    host = f"[{ip}]" if ":" in ip else ip
    out = lab.exec(pod, ["curl", "-s", "-m", "2", f"http://{host}:{port}/"], timeout=12)
    return out.returncode, out.stdout


def world_ips(lab: Lab, name: str) -> list[str]:
    ips = lab.plan.world(name).ips
    for ip in ips:  # the test sends traffic there: it must be a private address the lab pinned
        assert ipaddress.ip_address(ip).is_private, ip
    return ips


def pod_ips(lab: Lab, pod: str) -> list[str]:
    return lab.pod(pod).ips


def wait_echo_ready(lab: Lab, timeout: float = 15.0) -> None:
    """The echo pod's command has no readiness probe: poll until each of its ports answers."""
    ip = pod_ips(lab, "echo")[0]
    pending = [("tcp", p) for p in TCP_PORTS] + [("udp", p) for p in UDP_PORTS]
    deadline = time.monotonic() + timeout
    while pending:
        pending = [
            (proto, p) for proto, p in pending if echo(lab, "peer", proto, ip, p, timeout=0.5) != ECHOED
        ]
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"echo pod not answering on {pending}")


def run_all(checks: dict[Any, Callable[[], Any]]) -> dict[Any, Any]:
    """Run the zero-argument callables of ``checks`` in parallel (denied flows each wait a timeout)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {k: pool.submit(f) for k, f in checks.items()}
        return {k: f.result() for k, f in futures.items()}


def apply(tmp_path: Path, *docs: dict[str, object]) -> None:
    d = tmp_path / "policies"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    for i, doc in enumerate(docs):
        (d / f"p{i}.yaml").write_text(yaml.safe_dump(doc))
    _, seconds = agent_lab.apply(NAME, d)
    print(f"applied {len(docs)} policies in {seconds:.3f}s")


def cnp(name: str, namespace: str, spec: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def excepted_cidrs(lab: Lab) -> dict[str, object]:
    """toCIDRSet entries: the /24 (/64) holding both world hosts, except the /25 (/120) of "excepted"."""
    rules = []
    for ip in world_ips(lab, "excepted"):
        addr = ipaddress.ip_address(ip)
        wide, narrow = (24, 25) if addr.version == 4 else (64, 120)
        rules.append(
            {
                "cidr": str(ipaddress.ip_network(f"{ip}/{wide}", strict=False)),
                "except": [str(ipaddress.ip_network(f"{ip}/{narrow}", strict=False))],
            }
        )
    for ip in world_ips(lab, "inside"):  # the plan's addresses fit the rule: inside a CIDR, not excepted
        addr = ipaddress.ip_address(ip)
        assert any(
            addr in ipaddress.ip_network(r["cidr"]) and addr not in ipaddress.ip_network(r["except"][0])
            for r in rules
        ), ip
    return {"toCIDRSet": rules}


# --------------------------------------------------------------------------------------------- tests
def test_baseline_everything_connects(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path)
    web, echo_ip = pod_ips(lab, "web"), pod_ips(lab, "echo")
    checks: dict[Any, Callable[[], Any]] = {}
    for pod in ("client-a", "client-b", "peer"):
        for ip in web:
            checks[f"{pod}->web {ip}"] = lambda pod=pod, ip=ip: curl(lab, pod, ip)[0]
        for world in ("inside", "excepted"):
            for ip in world_ips(lab, world):
                checks[f"{pod}->{world} {ip}"] = lambda pod=pod, ip=ip: curl(lab, pod, ip)[0]
    checks["udp 9000"] = lambda: echo(lab, "client-a", "udp", echo_ip[1], 9000)
    results = run_all(checks)
    assert all(v == 0 for v in results.values()), results


def test_allow_by_namespace_label(lab: Lab, tmp_path: Path) -> None:
    """A policy in namespace srv admitting ``k8s:io.kubernetes.pod.namespace: alpha``: alpha's pod gets
    in (from the other node), beta's (same node) and srv's own pod (other node) do not."""
    apply(
        tmp_path,
        cnp(
            "web-from-alpha",
            "srv",
            {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [
                    {"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "alpha"}}]}
                ],
            },
        ),
    )
    checks: dict[Any, Callable[[], Any]] = {}
    for ip in pod_ips(lab, "web"):
        for pod in ("client-a", "client-b", "peer"):
            checks[(pod, ip)] = lambda pod=pod, ip=ip: curl(lab, pod, ip)
    results = run_all(checks)
    for (pod, ip), (rc, body) in results.items():
        if pod == "client-a":
            assert rc == 0 and "Hello from web" in body, (pod, ip, rc, body)
        else:
            assert rc == CURL_TIMEOUT, (pod, ip, rc, body)
    # other pods are not selected
    assert echo(lab, "client-b", "tcp", pod_ips(lab, "echo")[0], 9000) == ECHOED


def test_to_cidr_set_with_except(lab: Lab, tmp_path: Path) -> None:
    apply(
        tmp_path,
        cnp(
            "b-to-cidr",
            "beta",
            {"endpointSelector": {"matchLabels": {"app": "client"}}, "egress": [excepted_cidrs(lab)]},
        ),
    )
    checks: dict[Any, Callable[[], Any]] = {}
    for world in ("inside", "excepted"):
        for ip in world_ips(lab, world):
            checks[(world, ip)] = lambda ip=ip: curl(lab, "client-b", ip)
    checks[("pod", "web")] = lambda: curl(lab, "client-b", pod_ips(lab, "web")[0])
    checks[("other", "client-a")] = lambda: curl(lab, "client-a", world_ips(lab, "excepted")[0])
    results = run_all(checks)
    for (what, ip), (rc, body) in results.items():
        if what in ("inside", "other"):
            assert rc == 0 and "Hello from" in body, (what, ip, rc, body)
        else:
            assert rc == CURL_TIMEOUT, (what, ip, rc, body)


def test_to_entities_world(lab: Lab, tmp_path: Path) -> None:
    """World hosts (also one whose address has a CIDR identity from another policy, which carries
    ``reserved:world``) are allowed; pods on either node are not."""
    apply(
        tmp_path,
        cnp(
            "a-to-world",
            "alpha",
            {"endpointSelector": {"matchLabels": {"app": "client"}}, "egress": [{"toEntities": ["world"]}]},
        ),
        cnp(
            "b-to-cidr",
            "beta",
            {"endpointSelector": {"matchLabels": {"app": "client"}}, "egress": [excepted_cidrs(lab)]},
        ),
    )
    checks: dict[Any, Callable[[], Any]] = {}
    for world in ("inside", "excepted"):
        for ip in world_ips(lab, world):
            checks[("world", ip)] = lambda ip=ip: curl(lab, "client-a", ip)
    for ip in pod_ips(lab, "web"):  # another node
        checks[("pod", ip)] = lambda ip=ip: curl(lab, "client-a", ip)
    for ip in pod_ips(lab, "peer"):  # the same node
        checks[("pod-tcp", ip)] = lambda ip=ip: (echo(lab, "client-a", "tcp", ip, 9000), "")
    results = run_all(checks)
    for (what, ip), (rc, body) in results.items():
        if what == "world":
            assert rc == 0 and "Hello from" in body, (what, ip, rc, body)
        elif what == "pod":
            assert rc == CURL_TIMEOUT, (what, ip, rc, body)
        else:
            assert rc == TIMED_OUT, (what, ip, rc)


def test_egress_deny_beats_allow(lab: Lab, tmp_path: Path) -> None:
    excepted = world_ips(lab, "excepted")
    apply(
        tmp_path,
        cnp(
            "a-allow-deny",
            "alpha",
            {
                "endpointSelector": {"matchLabels": {"app": "client"}},
                "egress": [
                    {"toEntities": ["world"]},
                    {
                        "toEndpoints": [
                            {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "srv", "app": "echo"}}
                        ]
                    },
                ],
                "egressDeny": [
                    {"toCIDR": [f"{ip}/{32 if '.' in ip else 128}" for ip in excepted]},
                    {
                        "toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "srv"}}],
                        "toPorts": [{"ports": [{"port": "9001", "protocol": "TCP"}]}],
                    },
                ],
            },
        ),
    )
    echo_ips = pod_ips(lab, "echo")
    checks: dict[Any, Callable[[], Any]] = {}
    for ip in world_ips(lab, "inside"):
        checks[("allowed-world", ip)] = lambda ip=ip: curl(lab, "client-a", ip)[0]
    for ip in excepted:
        checks[("denied-world", ip)] = lambda ip=ip: curl(lab, "client-a", ip)[0]
    for ip in echo_ips:
        checks[("allowed-9000", ip)] = lambda ip=ip: echo(lab, "client-a", "tcp", ip, 9000)
        checks[("denied-9001", ip)] = lambda ip=ip: echo(lab, "client-a", "tcp", ip, 9001)
    checks[("allowed-udp", echo_ips[0])] = lambda: echo(lab, "client-a", "udp", echo_ips[0], 9000)
    results = run_all(checks)
    for (what, ip), rc in results.items():
        if what.startswith("allowed"):
            assert rc == 0, (what, ip, rc)
        elif what == "denied-world":
            assert rc == CURL_TIMEOUT, (what, ip, rc)
        else:
            assert rc == TIMED_OUT, (what, ip, rc)


def test_port_range_and_protocol(lab: Lab, tmp_path: Path) -> None:
    """Ingress of echo: TCP 9000-9003 (``endPort``) and UDP 9005 only."""
    apply(
        tmp_path,
        cnp(
            "echo-ports",
            "srv",
            {
                "endpointSelector": {"matchLabels": {"app": "echo"}},
                "ingress": [
                    {
                        "fromEntities": ["cluster"],
                        "toPorts": [
                            {
                                "ports": [
                                    {"port": "9000", "endPort": 9003, "protocol": "TCP"},
                                    {"port": "9005", "protocol": "UDP"},
                                ]
                            }
                        ],
                    }
                ],
            },
        ),
    )
    want = {
        ("tcp", 9000): ECHOED,
        ("tcp", 9001): ECHOED,
        ("tcp", 9003): ECHOED,
        ("tcp", 9004): TIMED_OUT,  # just past endPort
        ("tcp", 9005): TIMED_OUT,  # UDP only
        ("udp", 9005): ECHOED,
        ("udp", 9000): TIMED_OUT,  # TCP only
    }
    checks: dict[Any, Callable[[], Any]] = {}
    for ip in pod_ips(lab, "echo"):
        for client in ("client-a", "client-b"):  # another node, the same node
            for proto, port in want:
                checks[(client, ip, proto, port)] = lambda c=client, ip=ip, proto=proto, port=port: echo(
                    lab, c, proto, ip, port
                )
    results = run_all(checks)
    wrong = {k: rc for k, rc in results.items() if rc != want[k[2:]]}
    assert not wrong, wrong
