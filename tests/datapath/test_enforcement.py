"""L3/L4 enforcement in a real kernel: identities, ports, protocols, deny, IPv6, spoofing, events."""

from __future__ import annotations

import contextlib
import socket
import subprocess

import pytest

from bpf.maps import Action, Direction, Event
from bpf.policy_entries import PolicyDecision
from bpf.reasons import DropReason, EventType, Hook, Verdict
from tests.datapath import netlab
from tests.datapath.conftest import IDENTITY, Lab

pytestmark = pytest.mark.root

EG, IN = Direction.EGRESS, Direction.INGRESS


def allow(direction: Direction, peer: int, proto: int | None, lo: int = 0, hi: int = 65535) -> PolicyDecision:
    return PolicyDecision(direction, peer, proto, lo, hi if proto is not None else 65535, Action.ALLOW)


def enforce(lab: Lab, name: str, *, ingress: bool = False, egress: bool = False) -> None:
    pod = lab.pod(name)
    lab.dp.set_endpoint(  # type: ignore[attr-defined]
        pod.ifindex, pod.index, IDENTITY[name], ingress_enforced=ingress, egress_enforced=egress
    )


def test_unenforced_endpoints_allow_everything(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    assert netlab.tcp_echo(a.name, b.ip4, 80)
    assert netlab.tcp_echo(a.name, b.ip6, 80)
    assert netlab.udp_echo(a.name, b.ip4, 53)


def test_allow_by_identity_and_port_default_deny(lab: Lab) -> None:
    a, b, c = lab.pod("a"), lab.pod("b"), lab.pod("c")
    enforce(lab, "b", ingress=True)
    lab.dp.sync_policy(b.index, [allow(IN, IDENTITY["a"], 6, 80, 80)])  # type: ignore[attr-defined]
    assert netlab.tcp_echo(a.name, b.ip4, 80)
    assert not netlab.tcp_echo(a.name, b.ip4, 443)
    assert not netlab.tcp_echo(c.name, b.ip4, 80)
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.dport == 443)
    assert isinstance(ev, Event)
    assert ev.reason == DropReason.POLICY_DENIED
    assert ev.hook == Hook.FROM_LXC
    assert ev.endpoint_id == b.index
    assert ev.src_identity == IDENTITY["a"] and ev.dst_identity == IDENTITY["b"]
    assert str(ev.src) == a.ip4 and str(ev.dst) == b.ip4


def test_ipv6_is_enforced_like_ipv4(lab: Lab) -> None:
    a, b, c = lab.pod("a"), lab.pod("b"), lab.pod("c")
    enforce(lab, "b", ingress=True)
    lab.dp.sync_policy(b.index, [allow(IN, IDENTITY["a"], 6, 80, 80)])  # type: ignore[attr-defined]
    assert netlab.tcp_echo(a.name, b.ip6, 80)
    assert not netlab.tcp_echo(a.name, b.ip6, 443)
    assert not netlab.tcp_echo(c.name, b.ip6, 80)
    assert not netlab.udp_echo(a.name, b.ip6, 53)
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.dport == 443)
    assert isinstance(ev, Event) and ev.src is not None and ev.src.version == 6


def test_egress_policy_and_any_peer(lab: Lab) -> None:
    a, b, c = lab.pod("a"), lab.pod("b"), lab.pod("c")
    enforce(lab, "a", egress=True)
    lab.dp.sync_policy(  # type: ignore[attr-defined]
        a.index, [allow(EG, 0, 6, 8080, 8080), allow(EG, IDENTITY["b"], 6, 80, 80)]
    )
    assert netlab.tcp_echo(a.name, b.ip4, 8080)  # any peer
    assert netlab.tcp_echo(a.name, c.ip4, 8080)
    assert netlab.tcp_echo(a.name, b.ip4, 80)  # peer-specific
    assert not netlab.tcp_echo(a.name, c.ip4, 80)
    assert netlab.tcp_echo(a.name, lab.topo.world_ip4, 8080)  # world through the uplink
    assert not netlab.tcp_echo(a.name, lab.topo.world_ip4, 80)
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.dst_identity == 2)
    assert isinstance(ev, Event) and ev.reason == DropReason.POLICY_DENIED and ev.endpoint_id == a.index


def test_deny_wins_over_allow(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    enforce(lab, "b", ingress=True)
    lab.dp.sync_policy(  # type: ignore[attr-defined]
        b.index,
        [
            allow(IN, IDENTITY["a"], None),
            PolicyDecision(IN, 0, 6, 9000, 9001, Action.DENY),
        ],
    )
    assert netlab.tcp_echo(a.name, b.ip4, 80)
    assert not netlab.tcp_echo(a.name, b.ip4, 9001)
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.dport == 9001)
    assert isinstance(ev, Event) and ev.reason == DropReason.POLICY_DENY_RULE
    # a deny applies even where the direction is not enforced
    enforce(lab, "b", ingress=False)
    assert not netlab.tcp_echo(a.name, b.ip6, 9000)


def test_port_range_and_protocol(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    enforce(lab, "b", ingress=True)
    lab.dp.sync_policy(  # type: ignore[attr-defined]
        b.index, [allow(IN, IDENTITY["a"], 6, 443, 8080), allow(IN, IDENTITY["a"], 17, 53, 53)]
    )
    assert netlab.tcp_echo(a.name, b.ip4, 443)
    assert netlab.tcp_echo(a.name, b.ip4, 8080)
    assert not netlab.tcp_echo(a.name, b.ip4, 80)
    assert not netlab.tcp_echo(a.name, b.ip4, 9000)
    assert netlab.udp_echo(a.name, b.ip4, 53)
    assert netlab.udp_echo(a.name, b.ip6, 53)
    assert not netlab.udp_echo(a.name, b.ip4, 5353)


def test_replies_and_established_flows_pass(lab: Lab) -> None:
    """b's ingress allows a; b's egress allows nothing: replies still flow, new flows from b do not."""
    a, b = lab.pod("a"), lab.pod("b")
    enforce(lab, "b", ingress=True, egress=True)
    enforce(lab, "a", ingress=True, egress=True)
    lab.dp.sync_policy(b.index, [allow(IN, IDENTITY["a"], 6, 80, 80)])  # type: ignore[attr-defined]
    lab.dp.sync_policy(a.index, [allow(EG, IDENTITY["b"], 6, 80, 80)])  # type: ignore[attr-defined]
    with netlab.in_netns(a.name):
        s = socket.create_connection((b.ip4, 80), timeout=2)
    try:
        for i in range(5):
            s.sendall(b"x%d" % i)
            assert s.recv(100) == b"x%d" % i
    finally:
        s.close()
    entries = [e for e in lab.dp.ct_entries() if e.dport == 80 and str(e.dst) == b.ip4]  # type: ignore[attr-defined]
    assert entries and entries[0].pkts_rev > 0 and entries[0].verdict == Verdict.ALLOW
    assert not netlab.tcp_echo(b.name, a.ip4, 80)  # no server there, but the SYN is dropped first
    ev = lab.wait_event(
        lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.endpoint_id == b.index
    )
    assert isinstance(ev, Event) and ev.reason == DropReason.POLICY_DENIED


def test_ct_lifetime_is_configurable(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    lab.dp.set_ct_timeouts(udp=0.3)  # type: ignore[attr-defined]
    assert netlab.udp_echo(a.name, b.ip4, 53)
    e = next(e for e in lab.dp.ct_entries() if e.proto == 17)  # type: ignore[attr-defined]
    assert e.expires_ns - e.last_seen_ns == 300_000_000


def test_host_to_pod_uses_host_identity_and_proxy_mark(lab: Lab) -> None:
    b = lab.pod("b")
    enforce(lab, "b", ingress=True)
    assert not netlab.tcp_echo(lab.topo.node, b.ip4, 80)
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.hook == Hook.TO_LXC)
    assert isinstance(ev, Event) and ev.src_identity == 1 and ev.reason == DropReason.POLICY_DENIED
    # a proxy's upstream socket (SO_MARK 0xa00) was judged at L7: allowed and tracked
    with netlab.in_netns(lab.topo.node):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x0A00)
        s.settimeout(2)
        s.connect((b.ip4, 80))
        s.sendall(b"up")
        assert s.recv(10) == b"up"
    finally:
        s.close()
    lab.dp.sync_policy(b.index, [allow(IN, 1, 6, 80, 80)])  # type: ignore[attr-defined]
    assert netlab.tcp_echo(lab.topo.node, b.ip6, 80)


def test_world_through_uplink(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    world = lab.topo.world
    enforce(lab, "b", ingress=True)
    lab.dp.sync_policy(b.index, [allow(IN, 2, 6, 80, 80)])  # type: ignore[attr-defined]
    assert netlab.tcp_echo(world, b.ip4, 80)
    assert netlab.tcp_echo(world, b.ip6, 80)
    assert not netlab.tcp_echo(world, b.ip4, 443)
    ev = lab.wait_event(
        lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.hook == Hook.FROM_UPLINK
    )
    assert isinstance(ev, Event) and ev.src_identity == 2 and ev.endpoint_id == b.index
    # replies of a pod-originated flow come back through the uplink hook via conntrack
    enforce(lab, "a", ingress=True)
    assert netlab.tcp_echo(a.name, lab.topo.world_ip4, 443)
    assert netlab.udp_echo(a.name, lab.topo.world_ip6, 53)


def test_source_address_spoofing_is_dropped(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    spoof = "10.213.1.99"
    netlab.sh("ip", "-n", a.name, "addr", "add", f"{spoof}/32", "dev", "eth0")
    try:
        with netlab.in_netns(a.name):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((spoof, 0))
            s.sendto(b"spoofed", (b.ip4, 53))
        finally:
            s.close()
        ev = lab.wait_event(
            lambda e: isinstance(e, Event) and e.type == EventType.DROP and str(e.src) == spoof
        )
        assert isinstance(ev, Event) and ev.reason == DropReason.SOURCE_SPOOFED and ev.endpoint_id == a.index
    finally:
        netlab.sh("ip", "-n", a.name, "addr", "del", f"{spoof}/32", "dev", "eth0")


def test_verdict_events_when_asked(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    lab.dp.set_verdict_events(True)  # type: ignore[attr-defined]
    assert netlab.tcp_echo(a.name, b.ip4, 9000)
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.VERDICT and e.dport == 9000)
    assert isinstance(ev, Event) and ev.verdict == Verdict.ALLOW and ev.proto == 6


def test_icmp_type_in_port_field(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    enforce(lab, "b", ingress=True)

    def ping(ip: str) -> bool:
        r = subprocess.run(
            ["ip", "netns", "exec", a.name, "ping", "-c1", "-W1", ip], capture_output=True, check=False
        )
        return r.returncode == 0

    assert not ping(b.ip4)
    lab.dp.sync_policy(  # type: ignore[attr-defined]
        b.index, [allow(IN, IDENTITY["a"], 1, 8, 8), allow(IN, IDENTITY["a"], 58, 128, 128)]
    )
    assert ping(b.ip4)
    assert ping(b.ip6)


def test_fragments_of_allowed_datagrams_pass(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    enforce(lab, "b", ingress=True)
    lab.dp.sync_policy(b.index, [allow(IN, IDENTITY["a"], 17, 53, 53)])  # type: ignore[attr-defined]
    big = b"z" * 4000
    assert netlab.udp_echo(a.name, b.ip4, 53, payload=big)
    assert netlab.udp_echo(a.name, b.ip6, 53, payload=big)


def test_orphan_fragment_is_dropped(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    with netlab.in_netns(a.name):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with contextlib.closing(raw):
        src, dst = socket.inet_aton(a.ip4), socket.inet_aton(b.ip4)
        payload = b"q" * 16
        total = 20 + len(payload)
        # offset 185 * 8 bytes, no MF: a non-first fragment with no first fragment
        hdr = bytes([0x45, 0, total >> 8, total & 0xFF, 0x12, 0x34, 0x00, 185, 64, 17, 0, 0]) + src + dst
        raw.sendto(hdr + payload, (b.ip4, 0))
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.reason == DropReason.FRAG_NO_FIRST)
    assert isinstance(ev, Event) and ev.endpoint_id == a.index


def test_policy_change_applies_to_established_flows(lab: Lab) -> None:
    """An established flow keeps its verdict only while the policy stays: after a change (the agent
    bumps the policy revision) its next packet is decided again — a now-denied UDP flow and TCP
    connection are cut, a still-allowed one goes on."""
    a, b = lab.pod("a"), lab.pod("b")
    enforce(lab, "b", ingress=True)
    lab.dp.sync_policy(b.index, [allow(IN, IDENTITY["a"], None)])  # type: ignore[attr-defined]
    with netlab.in_netns(a.name):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.create_connection((b.ip4, 80), timeout=2)
    try:
        u.settimeout(0.6)

        def udp_ok() -> bool:
            u.sendto(b"u", (b.ip4, 53))
            try:
                return u.recv(100) == b"u"
            except OSError:
                return False

        def tcp_ok() -> bool:
            try:
                t.settimeout(0.6)
                t.sendall(b"t")
                return t.recv(100) == b"t"
            except OSError:
                return False

        assert udp_ok() and tcp_ok()
        # still allowed after a change elsewhere: both flows go on under the new revision
        lab.dp.sync_policy(b.index, [allow(IN, IDENTITY["a"], 6), allow(IN, IDENTITY["a"], 17)])  # type: ignore[attr-defined]
        lab.dp.bump_policy_revision()  # type: ignore[attr-defined]
        assert udp_ok() and tcp_ok()
        # now only TCP: the established UDP flow is cut, the TCP connection goes on
        lab.dp.sync_policy(b.index, [allow(IN, IDENTITY["a"], 6)])  # type: ignore[attr-defined]
        assert udp_ok(), "without a revision bump the established flow keeps its verdict"
        lab.dp.bump_policy_revision()  # type: ignore[attr-defined]
        assert not udp_ok() and tcp_ok()
        ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.dport == 53)
        assert isinstance(ev, Event) and ev.reason == DropReason.POLICY_DENIED
        # nothing at all: the established TCP connection is cut too
        lab.dp.sync_policy(b.index, [])  # type: ignore[attr-defined]
        lab.dp.bump_policy_revision()  # type: ignore[attr-defined]
        assert not tcp_ok()
    finally:
        u.close()
        t.close()
