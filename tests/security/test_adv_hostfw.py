"""Adversarial host firewall cases (host policies) on the real tc programs, beyond ``test_adv_host.py``.

Uses the datapath lab of ``tests/datapath`` (namespaces ``l7gdp-*``: a node, pods a/b/c, a world host)
and its packet builders (``tests/datapath/test_parsing.py``). The host endpoint is written as the agent
writes it while a host policy selects the node: every node address (uplink and pod gateways) carries
``HOST_ENDPOINT_ID``; its ingress is enforced and allows TCP/UDP 9300 from pod a and from the world,
nothing on 9301. A node echo server answers TCP and UDP on both ports. Outcomes are real (echoes,
datagrams or ICMP messages received or not) and the drop events' reasons.

Cases: pod → node and world → node on node addresses the ipcache does not know (a link-local address,
an address on another interface); the world spoofing a local source (the node's, a pod gateway's, a local
pod's address); ICMPv6 neighbour discovery/MLD types forwarded between pods and to/from the world with
any source; ICMP echo requests taken for replies of a flow the other way; fragments and IPv6 extension
headers to a denied node port; a connection opened before the host policy.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from bpf.maps import HOST_ENDPOINT_ID, IDENTITY_HOST, IDENTITY_WORLD, Action, Direction, Event
from bpf.policy_entries import PolicyDecision
from bpf.reasons import DropReason, EventType, Hook
from tests.datapath import netlab
from tests.datapath.conftest import IDENTITY, Lab, lab, lab_session  # noqa: F401 (fixtures)
from tests.datapath.test_parsing import (
    DSTOPTS,
    FRAGMENT,
    HOPOPTS,
    checksum,
    ext,
    fragment,
    ipv4,
    ipv6,
    mac,
    send4,
    send6,
    udp,
    write_frame,
)
from tests.datapath.test_to_uplink import UPLINK_IPS

pytestmark = pytest.mark.root

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
ALLOWED, DENIED = 9300, 9301  # the node's echo ports: the host's ingress allows 9300 only
SPOOF_PORT = 9400  # UDP receivers for the spoofing cases
EXTRA_IF = "hfw0"  # an interface (a veth pair) in the node with addresses the ipcache does not know
EXTRA_IPS = ("10.213.250.1", "fd00:213::250:1")


def allow(direction: Direction, peer: int, proto: int, lo: int, hi: int | None = None) -> PolicyDecision:
    return PolicyDecision(direction, peer, proto, lo, lo if hi is None else hi, Action.ALLOW)


def node_addresses(dl: Lab) -> list[str]:
    return [*UPLINK_IPS, *(ip for p in dl.topo.pods.values() for ip in (p.node_ip4, p.node_ip6))]


@pytest.fixture
def hfw(lab: Lab) -> Iterator[Lab]:  # noqa: F811
    dl = lab
    """The host endpoint (ingress enforced: 9300 from pod a and the world), a node echo server."""
    dp = dl.dp
    for ip in node_addresses(dl):
        dp.set_ipcache(ip, IDENTITY_HOST, HOST_ENDPOINT_ID)  # type: ignore[attr-defined]
    dp.set_endpoint(0, HOST_ENDPOINT_ID, IDENTITY_HOST, ingress_enforced=True)  # type: ignore[attr-defined]
    dp.sync_policy(  # type: ignore[attr-defined]
        HOST_ENDPOINT_ID,
        [
            allow(Direction.INGRESS, peer, proto, ALLOWED)
            for peer in (IDENTITY["a"], IDENTITY_WORLD)
            for proto in (TCP, UDP)
        ],
    )
    server = netlab.EchoServer(dl.topo.node, (ALLOWED, DENIED), (ALLOWED, DENIED))
    try:
        yield dl
    finally:
        server.close()
        dp.sync_policy(HOST_ENDPOINT_ID, [])  # type: ignore[attr-defined]
        dp.delete_endpoint(HOST_ENDPOINT_ID)  # type: ignore[attr-defined]
        for ip in UPLINK_IPS:
            dp.delete_ipcache(ip)  # type: ignore[attr-defined]


def drop(dl: Lab, hook: Hook, proto: int, reason: DropReason, **fields: object) -> Event:
    def match(e: object) -> bool:
        return (
            isinstance(e, Event)
            and e.type == EventType.DROP
            and e.hook == hook
            and e.proto == proto
            and e.reason == reason
            and all(getattr(e, k) == v for k, v in fields.items())
        )

    ev = dl.wait_event(match)
    assert isinstance(ev, Event)
    return ev


def link_local(netns: str, dev: str) -> str:
    out = subprocess.run(
        ["ip", "-j", "-n", netns, "-6", "addr", "show", "dev", dev, "scope", "link"],
        capture_output=True,
        text=True,
        check=True,
    )
    return next(str(a["local"]) for a in json.loads(out.stdout)[0]["addr_info"] if "local" in a)


def reach(
    netns: str, source: str, ip: str, port: int, *, proto: int, dev: str = "eth0", timeout: float = 1.5
) -> bool:
    """TCP connect-and-echo or UDP echo from ``netns`` bound to ``source`` (its own address) to ip:port;
    a link-local ``ip`` is reached through ``dev``."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with netlab.in_netns(netns):
        s = socket.socket(family, socket.SOCK_STREAM if proto == TCP else socket.SOCK_DGRAM)
        scope = socket.if_nametoindex(dev) if ip.startswith("fe80") else 0
    addr: tuple[str, int] | tuple[str, int, int, int] = (
        (ip, port, 0, scope) if family == socket.AF_INET6 else (ip, port)
    )
    try:
        s.settimeout(timeout)
        s.bind((source, 0))
        if proto == TCP:
            s.connect(addr)
            s.sendall(b"hello")
        else:
            s.sendto(b"hello", addr)
        return s.recv(100) == b"hello"
    except OSError:
        return False
    finally:
        s.close()


# ------------------------------------------------------------- node addresses the ipcache does not know
@pytest.fixture
def extra_addresses(hfw: Lab) -> Iterator[Lab]:
    node = hfw.topo.node
    netlab.sh("ip", "-n", node, "link", "add", EXTRA_IF, "type", "veth", "peer", "name", f"{EXTRA_IF}p")
    try:
        netlab.sh("ip", "-n", node, "link", "set", EXTRA_IF, "up")
        netlab.sh("ip", "-n", node, "addr", "add", f"{EXTRA_IPS[0]}/32", "dev", EXTRA_IF)
        netlab.sh("ip", "-n", node, "addr", "add", f"{EXTRA_IPS[1]}/128", "dev", EXTRA_IF, "nodad")
        yield hfw
    finally:
        netlab.sh("ip", "-n", node, "link", "del", EXTRA_IF)


@pytest.mark.parametrize("target", ["v4-other-interface", "v6-other-interface", "v6-link-local"])
@pytest.mark.parametrize("proto", [TCP, UDP], ids=["tcp", "udp"])
def test_pod_to_a_node_address_the_ipcache_does_not_know_meets_the_host_policy(
    extra_addresses: Lab, target: str, proto: int
) -> None:
    """A pod reaching the node on an address that is not in the ipcache (the gateway's link-local
    address, an address on another interface) is still traffic to the node: the host's ingress policy
    applies (9301 dropped with POLICY_DENIED, 9300 answered)."""
    dl = extra_addresses
    a = dl.pod("a")
    ip = {
        "v4-other-interface": EXTRA_IPS[0],
        "v6-other-interface": EXTRA_IPS[1],
        "v6-link-local": link_local(dl.topo.node, a.host_if),
    }[target]
    source = a.ip6 if ":" in ip else a.ip4
    assert reach(a.name, source, ip, ALLOWED, proto=proto)
    assert not reach(a.name, source, ip, DENIED, proto=proto, timeout=0.4)
    ev = drop(dl, Hook.FROM_LXC, proto, DropReason.POLICY_DENIED, dport=DENIED)
    assert ev.endpoint_id == HOST_ENDPOINT_ID


@pytest.mark.parametrize("target", ["v4-other-interface", "v6-other-interface", "v6-link-local"])
@pytest.mark.parametrize("proto", [TCP, UDP], ids=["tcp", "udp"])
def test_world_to_a_node_address_the_ipcache_does_not_know_meets_the_host_policy(
    extra_addresses: Lab, target: str, proto: int
) -> None:
    """The same from the world (other nodes, the uplink's segment): the uplink's link-local address and
    an address on another interface get the host's ingress policy on the uplink."""
    dl = extra_addresses
    topo = dl.topo
    ip = {
        "v4-other-interface": EXTRA_IPS[0],
        "v6-other-interface": EXTRA_IPS[1],
        "v6-link-local": link_local(topo.node, topo.uplink),
    }[target]
    source = topo.world_ip6 if ":" in ip else topo.world_ip4
    assert reach(topo.world, source, ip, ALLOWED, proto=proto)
    assert not reach(topo.world, source, ip, DENIED, proto=proto, timeout=0.4)
    ev = drop(dl, Hook.FROM_UPLINK, proto, DropReason.POLICY_DENIED, dport=DENIED)
    assert ev.endpoint_id == HOST_ENDPOINT_ID


# -------------------------------------------------------------------- the world spoofing a local source
def send_from_world(dl: Lab, ethertype: int, packet: bytes) -> None:
    """One Ethernet frame from the world's eth0 to the node's uplink (any source address)."""
    write_frame(dl.topo.world, "eth0", mac(dl.topo.node, dl.topo.uplink), ethertype, packet)


@contextlib.contextmanager
def receiver(netns: str, family: socket.AddressFamily, proto: int, port: int = 0) -> Iterator[socket.socket]:
    with netlab.in_netns(netns):
        if proto == UDP:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        else:
            s = socket.socket(family, socket.SOCK_RAW, proto)
    try:
        s.settimeout(0.1)
        yield s
    finally:
        s.close()


def received(s: socket.socket, marker: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if marker in s.recv(65535):
                return True
        except TimeoutError:
            continue
    return False


@pytest.fixture
def spoof_targets(hfw: Lab) -> Lab:
    """Pod c admits UDP 9400 from the node (host) and from pod b; the host admits it from pod b."""
    dl = hfw
    c = dl.pod("c")
    dp = dl.dp
    dp.set_endpoint(c.ifindex, c.index, IDENTITY["c"], ingress_enforced=True)  # type: ignore[attr-defined]
    dp.sync_policy(  # type: ignore[attr-defined]
        c.index, [allow(Direction.INGRESS, peer, UDP, SPOOF_PORT) for peer in (IDENTITY_HOST, IDENTITY["b"])]
    )
    dp.sync_policy(  # type: ignore[attr-defined]
        HOST_ENDPOINT_ID,
        [
            *(allow(Direction.INGRESS, IDENTITY["a"], p, ALLOWED) for p in (TCP, UDP)),
            allow(Direction.INGRESS, IDENTITY["b"], UDP, SPOOF_PORT),
        ],
    )
    return dl


@pytest.mark.parametrize("family", [0, 1], ids=["v4", "v6"])
@pytest.mark.parametrize("case", ["node-to-pod", "gateway-to-pod", "pod-to-pod", "pod-to-node"])
def test_world_cannot_spoof_a_local_source(spoof_targets: Lab, family: int, case: str) -> None:
    """A packet from the uplink whose source is one of the node's addresses or a local pod's cannot be
    genuine: only the node and that pod send from them. Taken at face value it gets that identity's
    rights (pods commonly admit the node, here pod c admits host and pod b): dropped as SOURCE_SPOOFED."""
    dl = spoof_targets
    b, c = dl.pod("b"), dl.pod("c")
    src = {
        "node-to-pod": UPLINK_IPS[family],
        "gateway-to-pod": (dl.pod("a").node_ip4, dl.pod("a").node_ip6)[family],
        "pod-to-pod": (b.ip4, b.ip6)[family],
        "pod-to-node": (b.ip4, b.ip6)[family],
    }[case]
    to_node = case == "pod-to-node"
    dst = UPLINK_IPS[family] if to_node else (c.ip4, c.ip6)[family]
    af = socket.AF_INET6 if family else socket.AF_INET
    marker = f"spoof-{case}".encode()
    with receiver(dl.topo.node if to_node else c.name, af, UDP, SPOOF_PORT) as r:
        # The genuine sender gets through (the receiver and the policy work).
        if case in ("pod-to-pod", "pod-to-node"):
            with netlab.in_netns(b.name):
                s = socket.socket(af, socket.SOCK_DGRAM)
            with contextlib.closing(s):
                s.sendto(b"genuine", (dst, SPOOF_PORT))
            assert received(r, b"genuine", 2)
        datagram = udp(src, dst, 5555, SPOOF_PORT, marker)
        if family:
            send_from_world(dl, 0x86DD, ipv6(src, dst, UDP, datagram))
        else:
            send_from_world(dl, 0x0800, ipv4(src, dst, UDP, datagram))
        assert not received(r, marker, 0.5)
    drop(dl, Hook.FROM_UPLINK, UDP, DropReason.SOURCE_SPOOFED, dport=SPOOF_PORT)


# ------------------------------------------------------------------- ICMPv6 neighbour discovery and MLD
NDP_TYPES = {"router-solicitation": 133, "neighbor-solicitation": 135, "redirect": 137, "mldv2-report": 143}


def icmp6_message(kind: int, marker: bytes) -> bytes:
    """An ICMPv6 message of type ``kind`` (checksum filled in by the kernel's raw socket)."""
    return struct.pack("!BBHI", kind, 0, 0, 0) + bytes(16) + marker


@pytest.fixture
def isolated(lab: Lab) -> Lab:  # noqa: F811
    dl = lab
    """Pod a may send nothing, pod b may receive nothing."""
    a, b = dl.pod("a"), dl.pod("b")
    dl.dp.set_endpoint(a.ifindex, a.index, IDENTITY["a"], egress_enforced=True)  # type: ignore[attr-defined]
    dl.dp.set_endpoint(b.ifindex, b.index, IDENTITY["b"], ingress_enforced=True)  # type: ignore[attr-defined]
    return dl


@pytest.mark.parametrize("kind", list(NDP_TYPES.values()), ids=list(NDP_TYPES))
@pytest.mark.parametrize("path", ["pod-to-pod", "pod-to-world", "world-to-pod"])
def test_neighbour_discovery_types_are_not_a_path_through_the_node(
    isolated: Lab, kind: int, path: str
) -> None:
    """NDP and MLD messages are link-local plumbing and pass without policy — but only on their link. A
    message of those types to a global address forwarded by the node (pod → pod, pod → world, world →
    pod) would carry any payload past a deny-all policy: it is judged like any ICMPv6 (dropped here)."""
    dl = isolated
    a, b = dl.pod("a"), dl.pod("b")
    sender, target, dst = {
        "pod-to-pod": (a.name, b.name, b.ip6),
        "pod-to-world": (a.name, dl.topo.world, dl.topo.world_ip6),
        "world-to-pod": (dl.topo.world, b.name, b.ip6),
    }[path]
    marker = f"ndp-{kind}-{path}".encode()
    with receiver(target, socket.AF_INET6, ICMPV6) as r:
        with netlab.in_netns(sender):
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, ICMPV6)
        with contextlib.closing(s):
            s.sendto(icmp6_message(kind, marker), (dst, 0))
        assert not received(r, marker, 0.5)
    hook = Hook.FROM_UPLINK if path == "world-to-pod" else Hook.FROM_LXC
    drop(dl, hook, ICMPV6, DropReason.POLICY_DENIED, dport=kind)


def test_neighbour_discovery_still_works_under_enforced_policies(isolated: Lab) -> None:
    """Resolution from scratch (neighbour caches flushed in the pods and the node) with a's egress and
    b's ingress enforced, allowing only TCP 80 between them: IPv6 connects."""
    dl = isolated
    a, b = dl.pod("a"), dl.pod("b")
    dl.dp.sync_policy(a.index, [allow(Direction.EGRESS, IDENTITY["b"], TCP, 80)])  # type: ignore[attr-defined]
    dl.dp.sync_policy(b.index, [allow(Direction.INGRESS, IDENTITY["a"], TCP, 80)])  # type: ignore[attr-defined]
    for ns in (a.name, b.name, dl.topo.node):
        netlab.sh("ip", "-n", ns, "-6", "neigh", "flush", "all")
    assert netlab.tcp_echo(a.name, b.ip6, 80, timeout=3)


# ------------------------------------------------------- ICMP echo requests taken for replies the other way
ECHO_ID = 0x4242


def echo(family: int, kind: str, marker: bytes) -> bytes:
    t = {(0, "request"): 8, (0, "reply"): 0, (1, "request"): 128, (1, "reply"): 129}[family, kind]
    msg = struct.pack("!BBHHH", t, 0, 0, ECHO_ID, 1) + marker
    if family == 0:  # ICMPv6 raw sockets checksum themselves
        msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
    return msg


def got_echo_reply(s: socket.socket, family: int, marker: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    want = 0 if family == 0 else 129
    while time.monotonic() < deadline:
        try:
            data = s.recv(65535)
        except TimeoutError:
            continue
        msg = data[(data[0] & 0xF) * 4 :] if family == 0 else data
        if msg[0] == want and struct.unpack("!H", msg[4:6])[0] == ECHO_ID and marker in msg:
            return True
    return False


def ping(sender: str, dst: str, family: int, marker: bytes, timeout: float) -> bool:
    af, proto = (socket.AF_INET, ICMP) if family == 0 else (socket.AF_INET6, ICMPV6)
    with receiver(sender, af, proto) as s:
        s.sendto(echo(family, "request", marker), (dst, 0))
        return got_echo_reply(s, family, marker, timeout)


@pytest.mark.parametrize("family", [0, 1], ids=["v4", "v6"])
@pytest.mark.parametrize("peer", ["node", "pod"])
def test_an_echo_request_is_not_the_reply_of_one_the_other_way(hfw: Lab, family: int, peer: str) -> None:
    """X pings pod a (allowed), then a sends an echo *request* with the same identifier to X, whose
    ingress admits no ICMP from a. It is a new flow, not the reply of X's: dropped (POLICY_DENIED)."""
    dl = hfw
    a, b = dl.pod("a"), dl.pod("b")
    proto = ICMPV6 if family else ICMP
    if peer == "node":
        x_ns, x_ip = dl.topo.node, (a.node_ip4, a.node_ip6)[family]  # the node's source towards a
    else:
        x_ns, x_ip = b.name, (b.ip4, b.ip6)[family]
        dl.dp.set_endpoint(b.ifindex, b.index, IDENTITY["b"], ingress_enforced=True)  # type: ignore[attr-defined]
    assert ping(x_ns, (a.ip4, a.ip6)[family], family, b"there", 2)
    assert not ping(a.name, x_ip, family, b"back", 0.5)
    drop(dl, Hook.FROM_LXC, proto, DropReason.POLICY_DENIED)


# -------------------------------------------------------- fragments and IPv6 extension headers to the node
@contextlib.contextmanager
def pod_udp(dl: Lab, family: int) -> Iterator[tuple[socket.socket, int]]:
    a = dl.pod("a")
    with netlab.in_netns(a.name):
        s = socket.socket(socket.AF_INET6 if family else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(((a.ip4, a.ip6)[family], 0))
        s.settimeout(0.1)
        yield s, s.getsockname()[1]
    finally:
        s.close()


def _with_id(packet: bytes, ident: int) -> bytes:
    """An IPv4 packet of ``ipv4`` with another identification (header checksum recomputed)."""
    hdr = bytearray(packet[:20])
    hdr[4:6] = struct.pack("!H", ident)
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
    return bytes(hdr) + packet[20:]


def v4_fragments(src: str, dst: str, sport: int, dport: int, data: bytes, *, ident: int) -> list[bytes]:
    """A UDP datagram in two IPv4 fragments (the first holds the UDP header and 8 bytes)."""
    dgram = udp(src, dst, sport, dport, data)
    return [
        _with_id(ipv4(src, dst, UDP, dgram[:16], frag=0x2000), ident),
        _with_id(ipv4(src, dst, UDP, dgram[16:], frag=2), ident),
    ]


def v6_fragments(src: str, dst: str, sport: int, dport: int, data: bytes, *, ident: int) -> list[bytes]:
    """A UDP datagram behind hop-by-hop and destination options, in two IPv6 fragments."""
    dgram = udp(src, dst, sport, dport, data)
    head = ext(DSTOPTS) + ext(FRAGMENT)  # hop-by-hop, then destination options, then the fragment header
    return [
        ipv6(src, dst, HOPOPTS, head + fragment(UDP, 0, True, ident) + dgram[:16]),
        ipv6(src, dst, HOPOPTS, head + fragment(UDP, 2, False, ident) + dgram[16:]),
    ]


@pytest.mark.parametrize("family", [0, 1], ids=["v4", "v6"])
def test_fragments_and_extension_headers_to_the_node_meet_the_host_policy(hfw: Lab, family: int) -> None:
    """A fragmented datagram (IPv6: behind hop-by-hop and destination options) reaches an allowed node
    port; to a denied port its first fragment is dropped (POLICY_DENIED) and the rest alone never
    reassembles; a lone non-first fragment is FRAG_NO_FIRST; a second first fragment for a denied port
    with the identifier of an allowed datagram is dropped and the allowed one still arrives intact."""
    dl = hfw
    a = dl.pod("a")
    src, dst = (a.ip4, a.ip6)[family], UPLINK_IPS[family]
    build = v6_fragments if family else v4_fragments
    send = send6 if family else send4
    with pod_udp(dl, family) as (s, sport):
        for frag in build(src, dst, sport, ALLOWED, b"A" * 24, ident=0x1001):
            send(dl, frag)
        assert received(s, b"A" * 24, 2)
        for frag in build(src, dst, sport, DENIED, b"D" * 24, ident=0x1002):
            send(dl, frag)
        assert not received(s, b"D" * 24, 0.5)
        drop(dl, Hook.FROM_LXC, UDP, DropReason.POLICY_DENIED, dport=DENIED)
        send(dl, build(src, dst, sport, DENIED, b"N" * 24, ident=0x1003)[1])
        drop(dl, Hook.FROM_LXC, UDP, DropReason.FRAG_NO_FIRST)
        good = build(src, dst, sport, ALLOWED, b"G" * 24, ident=0x1004)
        evil = build(src, dst, sport, DENIED, b"E" * 24, ident=0x1004)
        for frag in (good[0], evil[0], good[1]):
            send(dl, frag)
        assert received(s, b"G" * 24, 2)
        assert not received(s, b"E" * 24, 0.3)


# ---------------------------------------------------------------------- a connection older than the policy
@pytest.mark.parametrize("family", [0, 1], ids=["v4", "v6"])
@pytest.mark.parametrize("side", ["pod", "world"])
def test_a_connection_opened_before_the_host_policy_is_decided_again(
    lab: Lab,  # noqa: F811
    family: int,
    side: str,
) -> None:
    """Opened while the node was not enforced (no host endpoint), a TCP connection to a node port that
    the host policy then denies is cut at its next packet (the agent bumps the policy revision when it
    writes the host endpoint: conntrack entries are decided again, CT_STALE)."""
    dl = lab
    topo = dl.topo
    a = dl.pod("a")
    ns, source = (
        (a.name, (a.ip4, a.ip6)[family])
        if side == "pod"
        else (topo.world, (topo.world_ip4, topo.world_ip6)[family])
    )
    server = netlab.EchoServer(topo.node, (DENIED,), ())
    try:
        with netlab.in_netns(ns):
            s = socket.socket(socket.AF_INET6 if family else socket.AF_INET, socket.SOCK_STREAM)
        with contextlib.closing(s):
            s.settimeout(2)
            s.bind((source, 0))
            s.connect((UPLINK_IPS[family], DENIED))
            s.sendall(b"before")
            assert s.recv(100) == b"before"
            dp = dl.dp
            for ip in node_addresses(dl):
                dp.set_ipcache(ip, IDENTITY_HOST, HOST_ENDPOINT_ID)  # type: ignore[attr-defined]
            dp.set_endpoint(0, HOST_ENDPOINT_ID, IDENTITY_HOST, ingress_enforced=True)  # type: ignore[attr-defined]
            dp.bump_policy_revision()  # type: ignore[attr-defined]
            s.settimeout(0.5)
            s.sendall(b"after")
            with pytest.raises(TimeoutError):
                s.recv(100)
        hook = Hook.FROM_LXC if side == "pod" else Hook.FROM_UPLINK
        drop(dl, hook, TCP, DropReason.POLICY_DENIED, dport=DENIED)
    finally:
        server.close()
        dl.dp.delete_endpoint(HOST_ENDPOINT_ID)  # type: ignore[attr-defined]
        for ip in UPLINK_IPS:
            dl.dp.delete_ipcache(ip)  # type: ignore[attr-defined]
