"""Adversarial host firewall cases (bpf/to_uplink.c, host policies) on the real tc programs.

Uses the datapath lab of ``tests/datapath`` (namespaces ``l7gdp-*``, the node, pods and a world host) and
its host-endpoint fixture: the host's egress is enforced and only TCP 80 to the world is allowed.
"""

from __future__ import annotations

import socket

import pytest

from bpf.reasons import DropReason
from tests.datapath import netlab
from tests.datapath.conftest import Lab, lab, lab_session  # noqa: F401 (fixtures)
from tests.datapath.test_to_uplink import TCP, UDP, host, to_uplink_drop, world_ips  # noqa: F401

pytestmark = pytest.mark.root


def _from(netns: str, source: str, ip: str, port: int, *, proto: int, timeout: float) -> bool:
    """TCP connect-and-echo or UDP echo from ``source`` (a node address) to ip:port."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with netlab.in_netns(netns):
        s = socket.socket(family, socket.SOCK_STREAM if proto == TCP else socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.bind((source, 0))
        if proto == TCP:
            s.connect((ip, port))
            s.sendall(b"hello")
        else:
            s.sendto(b"hello", (ip, port))
        return s.recv(100) == b"hello"
    except OSError:
        return False
    finally:
        s.close()


@pytest.mark.parametrize("family", [0, 1], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", [TCP, UDP], ids=["tcp", "udp"])
def test_node_egress_from_a_pod_gateway_address_is_enforced(host: Lab, family: int, proto: int) -> None:  # noqa: F811
    """A node process that binds another of the node's addresses (a pod-side gateway address: identity
    ``host`` in the ipcache, but not one of the host endpoint's addresses) and talks to the world must
    get the host's egress policy too: TCP 443 and UDP 53 dropped, TCP 80 allowed."""
    dp_lab = host
    pod = dp_lab.pod("a")
    source = (pod.node_ip4, pod.node_ip6)[family]
    ip = world_ips(dp_lab)[family]
    port = 443 if proto == TCP else 53
    assert _from(dp_lab.topo.node, source, ip, 80, proto=TCP, timeout=2)
    assert not _from(dp_lab.topo.node, source, ip, port, proto=proto, timeout=0.4)
    assert to_uplink_drop(dp_lab, proto, port).reason == DropReason.POLICY_DENIED
