"""The host's egress on the uplink (bpf/to_uplink.c, host policies): enforced only once the host endpoint
exists, on packets whose source is one of the node's own addresses.

The node's uplink addresses carry the host endpoint's id in the ipcache (what the agent writes while a
host policy selects the node). With the host's egress enforced and only TCP 80 to the world allowed:
node → world TCP 80 passes (v4 and v6) and its replies pass the host's enforced ingress (conntrack);
TCP 443 and UDP 53 are dropped on the uplink's tc egress with ``POLICY_DENIED``; a proxy's upstream
socket (SO_MARK ``MARK_FROM_PROXY``) passes anyway; pods' traffic to the world (judged by ``from_lxc``)
passes whatever the host policy says. Without the host endpoint the program is a no-op.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from bpf.maps import (
    HOST_ENDPOINT_ID,
    IDENTITY_HOST,
    IDENTITY_WORLD,
    MARK_FROM_PROXY,
    Action,
    Direction,
    Event,
)
from bpf.policy_entries import PolicyDecision
from bpf.reasons import DropReason, Hook
from tests.datapath import netlab
from tests.datapath.conftest import Lab
from tests.datapath.test_proxy_ports import drop_event

pytestmark = pytest.mark.root

UPLINK_IPS = ("10.213.100.1", "fd00:213::100:1")  # the node's own addresses on the uplink
TCP, UDP = 6, 17


@pytest.fixture
def host(lab: Lab) -> Iterator[Lab]:
    """The host endpoint with its egress (and ingress) enforced: TCP 80 to the world allowed, nothing in."""
    dp = lab.dp
    for ip in UPLINK_IPS:
        dp.set_ipcache(ip, IDENTITY_HOST, HOST_ENDPOINT_ID)  # type: ignore[attr-defined]
    dp.set_endpoint(0, HOST_ENDPOINT_ID, IDENTITY_HOST, ingress_enforced=True, egress_enforced=True)  # type: ignore[attr-defined]
    dp.sync_policy(  # type: ignore[attr-defined]
        HOST_ENDPOINT_ID, [PolicyDecision(Direction.EGRESS, IDENTITY_WORLD, TCP, 80, 80, Action.ALLOW)]
    )
    try:
        yield lab
    finally:
        dp.delete_endpoint(HOST_ENDPOINT_ID)  # type: ignore[attr-defined]
        for ip in UPLINK_IPS:
            dp.delete_ipcache(ip)  # type: ignore[attr-defined]


def world_ips(lab: Lab) -> tuple[str, str]:
    return lab.topo.world_ip4, lab.topo.world_ip6


def to_uplink_drop(lab: Lab, proto: int, port: int) -> Event:
    return drop_event(lab, proto, port, Hook.TO_UPLINK)


def test_no_host_endpoint_no_enforcement(lab: Lab) -> None:
    for ip in world_ips(lab):
        assert netlab.tcp_echo(lab.topo.node, ip, 443, timeout=2), ip
        assert netlab.udp_echo(lab.topo.node, ip, 53, timeout=2), ip
    assert not [e for e in lab.dp.poll_events(0) if e.hook == Hook.TO_UPLINK]  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", [0, 1], ids=["v4", "v6"])
def test_host_egress_policy_on_the_uplink(host: Lab, family: int) -> None:
    lab = host
    ip = world_ips(lab)[family]
    assert netlab.tcp_echo(lab.topo.node, ip, 80, timeout=2)  # allowed; its replies pass the host's ingress
    assert not netlab.tcp_echo(lab.topo.node, ip, 443, timeout=0.4)
    ev = to_uplink_drop(lab, TCP, 443)
    assert ev.reason == DropReason.POLICY_DENIED
    assert (ev.endpoint_id, ev.src_identity, ev.dst_identity) == (
        HOST_ENDPOINT_ID,
        IDENTITY_HOST,
        IDENTITY_WORLD,
    )
    assert str(ev.src) == UPLINK_IPS[family]
    assert not netlab.udp_echo(lab.topo.node, ip, 53, timeout=0.4)
    assert to_uplink_drop(lab, UDP, 53).reason == DropReason.POLICY_DENIED


@pytest.mark.parametrize("family", [0, 1], ids=["v4", "v6"])
def test_proxy_upstream_passes_the_host_policy(host: Lab, family: int) -> None:
    """Envoy's and the DNS proxy's upstream sockets were judged at L7 for the pod they serve."""
    lab = host
    ip = world_ips(lab)[family]
    with netlab.in_netns(lab.topo.node):
        s = socket.socket(socket.AF_INET6 if family else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK_FROM_PROXY)
        s.settimeout(2)
        s.connect((ip, 443))
        s.sendall(b"upstream")
        assert s.recv(16) == b"upstream"
    finally:
        s.close()


def test_pod_traffic_to_the_world_is_not_the_hosts(host: Lab) -> None:
    """Forwarded pod packets were judged by from_lxc (pod a has no policy: allowed); the host policy,
    which allows only TCP 80, does not apply to them."""
    lab = host
    a = lab.pod("a")
    for ip in world_ips(lab):
        assert netlab.tcp_echo(a.name, ip, 443, timeout=2), ip
        assert netlab.udp_echo(a.name, ip, 53, timeout=2), ip
