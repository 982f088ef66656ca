"""Direct traffic to the node's proxy ports is dropped (DROP_PROXY_PORT_DIRECT); redirected traffic is not.

The node netns runs a transparent proxy bound to the wildcard address (what Envoy and the DNS proxy do)
on a port listed in ``l7g_proxy_ports`` for TCP and UDP (what the agent writes before a proxy
listens). Only listed ports are protected: a node service on another port — kubelet's 10250, inside
the range proxy ports are chosen from — stays reachable from pods and the world, v4 and v6.
Pods and the world send TCP and UDP straight to node addresses on the proxy's port — the pod-side
veth addresses (in the ipcache as reserved:host), addresses the ipcache does not know (the uplink
address, the IPv6 subnet-router anycast address, the veth subnet's broadcast address: the FIB says
"delivered locally") — and must be dropped, whatever the policy says (allow or even a redirect: a
transparent listener would take the node address as the original destination and connect to itself).
Redirected flows to pods and a DNS-style redirect of host traffic (node address, port 53) still reach
the proxy, and flows the node itself starts from a proxy port as source port still get their replies.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from bpf.maps import IDENTITY_HOST, PROXY_PORT_PROTOCOLS, Action, Direction, Event
from bpf.policy_entries import PolicyDecision
from bpf.reasons import DropReason, EventType, Hook
from tests.datapath import netlab
from tests.datapath.conftest import IDENTITY, Lab
from tests.datapath.test_redirect import TransparentProxy

pytestmark = pytest.mark.root

PROXY_PORT = 15001
OUTSIDE_PORT = 9000  # a node service outside the range proxy ports are chosen from
KUBELET_PORT = 10250  # a node service inside it (kubelet: metrics-server, kubectl logs/exec)
UPLINK_IP4 = "10.213.100.1"
UPLINK_IP6 = "fd00:213::100:1"
SUBNET_ANYCAST6 = "fd00:213::1:0"  # the node's subnet-router anycast address on veth a (forwarding on)
TCP, UDP = 6, 17


def protect(lab: Lab, port: int, protos: tuple[int, ...] = PROXY_PORT_PROTOCOLS) -> None:
    """What the agent does before a proxy listens on ``port``."""
    for proto in protos:
        lab.dp.set_proxy_port(port, proto)  # type: ignore[attr-defined]


@pytest.fixture
def proxy(lab: Lab) -> Iterator[TransparentProxy]:
    protect(lab, PROXY_PORT)
    p = TransparentProxy(lab.topo.node, PROXY_PORT)
    try:
        yield p
    finally:
        p.close()


def node_service(lab: Lab, port: int) -> Iterator[netlab.EchoServer]:
    """A TCP and UDP echo service of the node (wildcard address) on ``port``."""
    s = netlab.EchoServer(lab.topo.node, (port,), (port,))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def node_echo(lab: Lab) -> Iterator[netlab.EchoServer]:
    yield from node_service(lab, OUTSIDE_PORT)


def direct_targets(lab: Lab) -> list[tuple[str, str]]:
    a, b = lab.pod("a"), lab.pod("b")
    return [
        ("own-veth-v4", a.node_ip4),
        ("own-veth-v6", a.node_ip6),
        ("other-veth-v4", b.node_ip4),
        ("uplink-v4", UPLINK_IP4),
        ("uplink-v6", UPLINK_IP6),
        ("subnet-anycast-v6", SUBNET_ANYCAST6),
    ]


def drop_event(lab: Lab, proto: int, port: int, hook: Hook) -> Event:
    ev = lab.wait_event(
        lambda e: (
            isinstance(e, Event)
            and e.type == EventType.DROP
            and e.proto == proto
            and e.dport == port
            and e.hook == hook
        )
    )
    assert isinstance(ev, Event)
    return ev


def send_udp(netns: str, ip: str, port: int, payload: bytes = b"query") -> None:
    with netlab.in_netns(netns):
        s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(payload, (ip, port))
    finally:
        s.close()


def allow_all_to_host(lab: Lab, *extra: PolicyDecision) -> None:
    a = lab.pod("a")
    lab.dp.set_endpoint(a.ifindex, a.index, IDENTITY["a"], egress_enforced=True)  # type: ignore[attr-defined]
    lab.dp.sync_policy(  # type: ignore[attr-defined]
        a.index, [PolicyDecision(Direction.EGRESS, IDENTITY_HOST, None, action=Action.ALLOW), *extra]
    )


def test_the_test_ports_are_in_the_range_proxy_ports_are_chosen_from() -> None:
    from l7.plan.datapath import NODE_SERVICE_PORTS, PROXY_PORT_MAX, PROXY_PORT_MIN

    assert PROXY_PORT_MIN <= PROXY_PORT <= PROXY_PORT_MAX
    assert PROXY_PORT_MIN <= KUBELET_PORT <= PROXY_PORT_MAX and KUBELET_PORT in NODE_SERVICE_PORTS
    assert not PROXY_PORT_MIN <= OUTSIDE_PORT <= PROXY_PORT_MAX


def test_pod_direct_tcp_and_udp_to_node_proxy_port_dropped(lab: Lab, proxy: TransparentProxy) -> None:
    """Every node address, both families, with a policy that allows all traffic to the host."""
    a = lab.pod("a")
    allow_all_to_host(lab)
    for name, ip in direct_targets(lab):
        assert not netlab.tcp_echo(a.name, ip, PROXY_PORT, timeout=0.4), name
        ev = drop_event(lab, TCP, PROXY_PORT, Hook.FROM_LXC)
        assert ev.reason == DropReason.PROXY_PORT_DIRECT, name
        assert ev.endpoint_id == a.index and ev.src_identity == IDENTITY["a"]
        send_udp(a.name, ip, PROXY_PORT)
        ev = drop_event(lab, UDP, PROXY_PORT, Hook.FROM_LXC)
        assert ev.reason == DropReason.PROXY_PORT_DIRECT, name
    assert proxy.tcp_orig == [] and proxy.udp_orig == []


def test_pod_udp_broadcast_to_proxy_port_dropped(lab: Lab, proxy: TransparentProxy) -> None:
    """The veth subnet's broadcast address reaches wildcard UDP sockets on the node too."""
    a = lab.pod("a")
    send_udp(a.name, "10.213.1.255", PROXY_PORT)
    assert drop_event(lab, UDP, PROXY_PORT, Hook.FROM_LXC).reason == DropReason.PROXY_PORT_DIRECT
    assert proxy.udp_orig == []


def test_pod_direct_dropped_without_policy_and_in_audit_mode(lab: Lab, proxy: TransparentProxy) -> None:
    """Not a policy verdict: no enforcement (default allow) and audit mode do not let it through."""
    a = lab.pod("a")
    assert not netlab.tcp_echo(a.name, a.node_ip4, PROXY_PORT, timeout=0.4)
    assert drop_event(lab, TCP, PROXY_PORT, Hook.FROM_LXC).reason == DropReason.PROXY_PORT_DIRECT
    lab.dp.set_endpoint(a.ifindex, a.index, IDENTITY["a"], egress_enforced=True, audit=True)  # type: ignore[attr-defined]
    send_udp(a.name, a.node_ip6, PROXY_PORT)
    assert drop_event(lab, UDP, PROXY_PORT, Hook.FROM_LXC).reason == DropReason.PROXY_PORT_DIRECT
    assert proxy.tcp_orig == [] and proxy.udp_orig == []


def test_redirect_entry_for_node_proxy_port_cannot_loop(lab: Lab, proxy: TransparentProxy) -> None:
    """A policy that redirects node:PROXY_PORT to the proxy on PROXY_PORT (Envoy would connect to
    itself) is overridden by the drop."""
    a = lab.pod("a")
    redirect = [
        PolicyDecision(
            Direction.EGRESS, IDENTITY_HOST, p, PROXY_PORT, PROXY_PORT, Action.REDIRECT, PROXY_PORT
        )
        for p in (TCP, UDP)
    ]
    allow_all_to_host(lab, *redirect)
    assert not netlab.tcp_echo(a.name, a.node_ip4, PROXY_PORT, timeout=0.4)
    assert drop_event(lab, TCP, PROXY_PORT, Hook.FROM_LXC).reason == DropReason.PROXY_PORT_DIRECT
    send_udp(a.name, a.node_ip6, PROXY_PORT)
    assert drop_event(lab, UDP, PROXY_PORT, Hook.FROM_LXC).reason == DropReason.PROXY_PORT_DIRECT
    assert proxy.tcp_orig == [] and proxy.udp_orig == []


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_redirected_flows_still_reach_the_proxy(lab: Lab, proxy: TransparentProxy, family: str) -> None:
    """Pod → pod redirected (TCP, UDP) and pod → node DNS redirected (host identity, port 53): the same
    proxy port, reached through the redirect, works."""
    a, b = lab.pod("a"), lab.pod("b")
    dst, node_dst = getattr(b, family), getattr(a, f"node_{family}")
    decisions = [
        PolicyDecision(Direction.EGRESS, IDENTITY["b"], p, 80, 80, Action.REDIRECT, PROXY_PORT)
        for p in (TCP, UDP)
    ] + [PolicyDecision(Direction.EGRESS, IDENTITY_HOST, UDP, 53, 53, Action.REDIRECT, PROXY_PORT)]
    lab.dp.sync_policy(a.index, decisions)  # type: ignore[attr-defined]
    assert netlab.tcp_echo(a.name, dst, 80, timeout=2, payload=b"via-proxy")
    assert proxy.wait(proxy.tcp_orig, (dst, 80))
    send_udp(a.name, dst, 80)
    assert proxy.wait(proxy.udp_orig, (dst, 80))
    send_udp(a.name, node_dst, 53)
    assert proxy.wait(proxy.udp_orig, (node_dst, 53))


@pytest.fixture
def kubelet(lab: Lab) -> Iterator[netlab.EchoServer]:
    yield from node_service(lab, KUBELET_PORT)


def test_node_service_in_the_range_reachable_while_the_proxy_port_is_not(
    lab: Lab, proxy: TransparentProxy, kubelet: netlab.EchoServer
) -> None:
    """kubelet's 10250 on every node address, from a pod and from the world, v4 and v6; the proxy's
    port on the same addresses is dropped."""
    a = lab.pod("a")
    for name, ip in direct_targets(lab):
        if ip != SUBNET_ANYCAST6:  # the kernel answers no TCP/UDP on an anycast address, with or without us
            assert netlab.tcp_echo(a.name, ip, KUBELET_PORT, timeout=2), name
            assert netlab.udp_echo(a.name, ip, KUBELET_PORT, timeout=2), name
        assert not netlab.tcp_echo(a.name, ip, PROXY_PORT, timeout=0.4), name
        assert drop_event(lab, TCP, PROXY_PORT, Hook.FROM_LXC).reason == DropReason.PROXY_PORT_DIRECT, name
    for ip in (UPLINK_IP4, UPLINK_IP6):
        assert netlab.tcp_echo(lab.topo.world, ip, KUBELET_PORT, timeout=2), ip
        assert netlab.udp_echo(lab.topo.world, ip, KUBELET_PORT, timeout=2), ip
        assert not netlab.tcp_echo(lab.topo.world, ip, PROXY_PORT, timeout=0.4), ip
        assert drop_event(lab, TCP, PROXY_PORT, Hook.FROM_UPLINK).reason == DropReason.PROXY_PORT_DIRECT, ip
    assert proxy.tcp_orig == [] and proxy.udp_orig == []


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_only_listed_ports_and_protocols_are_protected(
    lab: Lab, kubelet: netlab.EchoServer, family: str
) -> None:
    """The map is what the datapath protects, read on every packet: a port becomes unreachable the
    moment it is listed and reachable again when it is removed; the protocol is part of the key."""
    a = lab.pod("a")
    ip = getattr(a, f"node_{family}")
    assert netlab.tcp_echo(a.name, ip, KUBELET_PORT, timeout=2)
    protect(lab, KUBELET_PORT, (TCP,))
    assert lab.dp.proxy_ports() == {(KUBELET_PORT, TCP)}  # type: ignore[attr-defined]
    assert not netlab.tcp_echo(a.name, ip, KUBELET_PORT, timeout=0.4)
    assert drop_event(lab, TCP, KUBELET_PORT, Hook.FROM_LXC).reason == DropReason.PROXY_PORT_DIRECT
    assert netlab.udp_echo(a.name, ip, KUBELET_PORT, timeout=2), "UDP is not listed"
    protect(lab, KUBELET_PORT, (UDP,))
    assert not netlab.udp_echo(a.name, ip, KUBELET_PORT, timeout=0.4)
    assert drop_event(lab, UDP, KUBELET_PORT, Hook.FROM_LXC).reason == DropReason.PROXY_PORT_DIRECT
    for proto in (TCP, UDP):
        assert lab.dp.delete_proxy_port(KUBELET_PORT, proto)  # type: ignore[attr-defined]
    assert lab.dp.proxy_ports() == set()  # type: ignore[attr-defined]
    assert netlab.tcp_echo(a.name, ip, KUBELET_PORT, timeout=2)
    assert netlab.udp_echo(a.name, ip, KUBELET_PORT, timeout=2)


def test_node_services_outside_the_range_still_reachable(lab: Lab, node_echo: netlab.EchoServer) -> None:
    a = lab.pod("a")
    for ip in (a.node_ip4, a.node_ip6, UPLINK_IP4):
        assert netlab.tcp_echo(a.name, ip, OUTSIDE_PORT, timeout=2), ip
        assert netlab.udp_echo(a.name, ip, OUTSIDE_PORT, timeout=2), ip
    for ip in (UPLINK_IP4, UPLINK_IP6):
        assert netlab.tcp_echo(lab.topo.world, ip, OUTSIDE_PORT, timeout=2), ip


@pytest.mark.parametrize("ip", [UPLINK_IP4, UPLINK_IP6, "10.213.1.1"])
def test_world_direct_tcp_and_udp_to_node_proxy_port_dropped(
    lab: Lab, proxy: TransparentProxy, ip: str
) -> None:
    world = lab.topo.world
    assert not netlab.tcp_echo(world, ip, PROXY_PORT, timeout=0.4)
    ev = drop_event(lab, TCP, PROXY_PORT, Hook.FROM_UPLINK)
    assert ev.reason == DropReason.PROXY_PORT_DIRECT and ev.endpoint_id == 0
    send_udp(world, ip, PROXY_PORT)
    assert drop_event(lab, UDP, PROXY_PORT, Hook.FROM_UPLINK).reason == DropReason.PROXY_PORT_DIRECT
    assert proxy.tcp_orig == [] and proxy.udp_orig == []


@contextlib.contextmanager
def node_socket(lab: Lab, kind: socket.SocketKind, ip: str, sport: int) -> Iterator[socket.socket]:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with netlab.in_netns(lab.topo.node):
        s = socket.socket(fam, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
        s.settimeout(2)
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("peer", ["pod", "world"])
def test_node_flows_from_a_proxy_range_source_port_get_replies(lab: Lab, peer: str) -> None:
    """Replies to flows the node starts (conntrack on the pod side, the node's connected socket on the
    uplink) are not direct traffic, although they go to a node address on a proxy-range port."""
    ip = lab.pod("b").ip4 if peer == "pod" else lab.topo.world_ip4
    with node_socket(lab, socket.SOCK_STREAM, ip, 15011) as s:
        s.connect((ip, 80))
        s.sendall(b"ping")
        assert s.recv(10) == b"ping"
    with node_socket(lab, socket.SOCK_DGRAM, ip, 15012) as s:
        s.connect((ip, 53))
        s.send(b"ping")
        assert s.recv(10) == b"ping"
