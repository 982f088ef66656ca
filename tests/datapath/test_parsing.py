"""The packet parser (``bpf/lib/parse.h``) against crafted packets sent from inside a pod.

Frames are written with an AF_PACKET socket on pod a's ``eth0`` (addressed to the host-side veth's MAC),
so every header field is exactly what the test built; the from-lxc hook judges them. Pod b enforces its
ingress: a may reach it on UDP 53 and TCP 80 only. Outcomes are real (the echo server in b answers a
UDP socket in a) or read from the datapath's drop/verdict events. Traffic goes only to the lab's
addresses (10.213.0.0/16, fd00:213::/64).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from bpf.maps import Action, Direction, Event
from bpf.policy_entries import PolicyDecision
from bpf.reasons import DropReason, EventType, Hook, Verdict
from tests.datapath import netlab
from tests.datapath.conftest import IDENTITY, Lab

pytestmark = pytest.mark.root

UDP, TCP = 17, 6
HOPOPTS, ROUTING, FRAGMENT, DSTOPTS, AH = 0, 43, 44, 60, 51
NOP, EOL = 1, 0
MAX_EXT = 6  # L7G_MAX_EXT in parse.h


# ------------------------------------------------------------------------------------ packet building
def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    options: bytes = b"",
    ihl: int | None = None,
    tot_len: int | None = None,
    frag: int = 0,
    version: int = 4,
) -> bytes:
    """An IPv4 header (+ options, padded to 4 bytes unless ``ihl`` is forced) and payload."""
    if ihl is None:
        options += bytes(-len(options) % 4)
        ihl = 5 + len(options) // 4
    length = 20 + len(options) + len(payload) if tot_len is None else tot_len
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        version << 4 | ihl,
        0,
        length,
        0x1234,
        frag,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    hdr += options
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """A UDP header and data with a correct checksum (IPv4 or IPv6 pseudo-header)."""
    length = 8 + len(data)
    if ":" in src:
        pseudo = (
            socket.inet_pton(socket.AF_INET6, src)
            + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!I3xB", length, UDP)
        )
    else:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", UDP, length)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + hdr + data) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum) + data


def tcp_syn(src: str, dst: str, sport: int, dport: int, *, doff: int = 5) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, doff << 4, 0x02, 65535, 0, 0)
    pseudo = (
        socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + struct.pack("!I3xB", len(hdr), TCP)
    )
    return hdr[:16] + struct.pack("!H", checksum(pseudo + hdr)) + hdr[18:]


def ext(next_header: int, body: bytes = b"") -> bytes:
    """A hop-by-hop / destination options header (PadN to a multiple of 8) in front of ``next_header``."""
    opts = body
    pad = -(2 + len(opts)) % 8
    if pad == 1:
        opts += bytes([0])  # Pad1
    elif pad:
        opts += bytes([1, pad - 2]) + bytes(pad - 2)  # PadN
    return bytes([next_header, (2 + len(opts)) // 8 - 1]) + opts


def routing(next_header: int, segments_left: int) -> bytes:
    """A segment routing header (type 4) with one segment."""
    return bytes([next_header, 2, 4, segments_left, 0, 0, 0, 0]) + socket.inet_pton(
        socket.AF_INET6, "fd00:213::2:2"
    )


def fragment(next_header: int, offset: int, more: bool, ident: int = 0x4242) -> bytes:
    return struct.pack("!BBHI", next_header, 0, offset << 3 | int(more), ident)


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, payload_len: int | None = None) -> bytes:
    length = len(payload) if payload_len is None else payload_len
    return (
        struct.pack("!IHBB", 6 << 28, length, next_header, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def chain(headers: list[int], last: int, inner: bytes) -> tuple[int, bytes]:
    """Extension headers of the given kinds (HOPOPTS / DSTOPTS) in order, then ``last`` carrying ``inner``.
    Returns (the IPv6 header's next header, the payload)."""
    kinds = [*headers, last]
    payload = inner
    for i in range(len(headers) - 1, -1, -1):
        payload = ext(kinds[i + 1]) + payload
    return kinds[0], payload


# ------------------------------------------------------------------------------------------- sending
def mac(netns: str, dev: str) -> bytes:
    out = subprocess.run(
        ["ip", "-j", "-n", netns, "link", "show", "dev", dev], capture_output=True, text=True, check=True
    )
    return bytes.fromhex(json.loads(out.stdout)[0]["address"].replace(":", ""))


def write_frame(netns: str, dev: str, dst_mac: bytes, ethertype: int, packet: bytes) -> None:
    """Write one Ethernet frame carrying ``packet`` (any addresses) on ``dev`` of ``netns`` to ``dst_mac``."""
    frame = dst_mac + mac(netns, dev) + struct.pack("!H", ethertype) + packet
    with netlab.in_netns(netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.bind((dev, 0))
            s.send(frame)
        finally:
            s.close()


def send_frame(lab: Lab, pod: str, ethertype: int, packet: bytes) -> None:
    """Write one Ethernet frame on ``pod``'s eth0, addressed to its host-side veth."""
    p = lab.pod(pod)
    write_frame(p.name, "eth0", mac(lab.topo.node, p.host_if), ethertype, packet)


def send4(lab: Lab, packet: bytes, pod: str = "a") -> None:
    send_frame(lab, pod, 0x0800, packet)


def send6(lab: Lab, packet: bytes, pod: str = "a") -> None:
    send_frame(lab, pod, 0x86DD, packet)


@contextlib.contextmanager
def udp_socket(lab: Lab, family: socket.AddressFamily) -> Iterator[tuple[socket.socket, int]]:
    """A UDP socket in pod a (where b's echo answers go) and its port."""
    a = lab.pod("a")
    with netlab.in_netns(a.name):
        s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.bind((a.ip4 if family == socket.AF_INET else a.ip6, 0))
        s.settimeout(2.0)
        yield s, s.getsockname()[1]
    finally:
        s.close()


def echoed(s: socket.socket, data: bytes) -> bool:
    try:
        return s.recv(65535) == data
    except TimeoutError:
        return False


def drop_of(lab: Lab, reason: DropReason, **fields: object) -> Event:
    """Wait for a drop event of pod a's from-lxc hook with ``reason`` (and the given field values)."""
    a = lab.pod("a")

    def match(e: object) -> bool:
        return (
            isinstance(e, Event)
            and e.type == EventType.DROP
            and e.hook == Hook.FROM_LXC
            and e.ifindex == a.ifindex
            and e.reason == reason
            and all(getattr(e, k) == v for k, v in fields.items())
        )

    ev = lab.wait_event(match)
    assert isinstance(ev, Event)
    return ev


def verdict_of(lab: Lab, proto: int, dport: int) -> Event:
    a = lab.pod("a")
    ev = lab.wait_event(
        lambda e: (
            isinstance(e, Event)
            and e.type == EventType.VERDICT
            and e.ifindex == a.ifindex
            and e.proto == proto
            and e.dport == dport
        )
    )
    assert isinstance(ev, Event)
    return ev


@pytest.fixture
def plab(lab: Lab) -> Lab:
    """b enforces its ingress: a may send UDP 53 and TCP 80; verdict events on."""
    b = lab.pod("b")
    lab.dp.set_endpoint(b.ifindex, b.index, IDENTITY["b"], ingress_enforced=True)  # type: ignore[attr-defined]
    lab.dp.sync_policy(  # type: ignore[attr-defined]
        b.index,
        [
            PolicyDecision(Direction.INGRESS, IDENTITY["a"], UDP, 53, 53, Action.ALLOW),
            PolicyDecision(Direction.INGRESS, IDENTITY["a"], TCP, 80, 80, Action.ALLOW),
        ],
    )
    lab.dp.set_verdict_events(True)  # type: ignore[attr-defined]
    return lab


# --------------------------------------------------------------------------------------------- IPv4
RECORD_ROUTE = bytes([7, 7, 4, 0, 0, 0, 0])  # one empty slot


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(bytes([NOP, NOP, NOP, EOL]), id="nop-eol"),
        pytest.param(RECORD_ROUTE + bytes([EOL]), id="record-route"),
        pytest.param(bytes([NOP]) * 3 + RECORD_ROUTE + bytes([NOP, EOL]) + bytes(4), id="nop-rr-eol-pad"),
    ],
)
def test_ipv4_options_are_walked_and_ports_read_after_them(plab: Lab, options: bytes) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    with udp_socket(plab, socket.AF_INET) as (s, port):
        send4(plab, ipv4(a.ip4, b.ip4, UDP, udp(a.ip4, b.ip4, port, 53, b"opts"), options=options))
        assert echoed(s, b"opts")
        ev = verdict_of(plab, UDP, 53)
        assert ev.verdict == Verdict.ALLOW and ev.sport == port and str(ev.src) == a.ip4
        # the same options to a denied port: the port behind the options is judged
        send4(plab, ipv4(a.ip4, b.ip4, UDP, udp(a.ip4, b.ip4, port, 5353, b"opts"), options=options))
        ev = drop_of(plab, DropReason.POLICY_DENIED, dport=5353)
        assert ev.sport == port and ev.proto == UDP and str(ev.dst) == b.ip4


@pytest.mark.parametrize("kind", [131, 137], ids=["lsrr", "ssrr"])
def test_ipv4_source_route_option_is_dropped(plab: Lab, kind: int) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    option = bytes([kind, 7, 4]) + socket.inet_aton(b.ip4)
    send4(plab, ipv4(a.ip4, b.ip4, UDP, udp(a.ip4, b.ip4, 4000, 53, b"sr"), options=option))
    ev = drop_of(plab, DropReason.IPV4_OPTION_SOURCE_ROUTE)
    assert str(ev.src) == a.ip4 and ev.endpoint_id == a.index


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(bytes([7, 1, 0, 0]), id="length-below-2"),
        pytest.param(bytes([7, 12, 4, 0]), id="length-past-header"),
        pytest.param(bytes([NOP, NOP, NOP, 7]), id="length-byte-missing"),
        pytest.param(bytes([NOP]) * 20, id="too-many-options"),
    ],
)
def test_ipv4_malformed_options_are_dropped(plab: Lab, options: bytes) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    send4(plab, ipv4(a.ip4, b.ip4, UDP, udp(a.ip4, b.ip4, 4001, 53, b"bad"), options=options))
    ev = drop_of(plab, DropReason.IPV4_OPTIONS_MALFORMED)
    assert ev.endpoint_id == a.index


def test_ipv4_sixteen_options_are_walked(plab: Lab) -> None:
    """L7G_MAX_IPV4_OPTS = 16: sixteen NOPs (ihl 9) are within the walk."""
    a, b = plab.pod("a"), plab.pod("b")
    with udp_socket(plab, socket.AF_INET) as (s, port):
        send4(plab, ipv4(a.ip4, b.ip4, UDP, udp(a.ip4, b.ip4, port, 53, b"16"), options=bytes([NOP]) * 16))
        assert echoed(s, b"16")


def _malformed_ipv4(a: str, b: str) -> dict[str, bytes]:
    body = udp(a, b, 4002, 53, b"x" * 8)
    good = ipv4(a, b, UDP, body)
    return {
        "ihl-4": ipv4(a, b, UDP, body, ihl=4),
        "ihl-0": ipv4(a, b, UDP, body, ihl=0),
        "tot-len-past-frame": ipv4(a, b, UDP, body, tot_len=len(good) + 40),
        "tot-len-below-ihl": ipv4(a, b, UDP, body, tot_len=16),
        "version-6": ipv4(a, b, UDP, body, version=6),
        "truncated-header": good[:12],
    }


@pytest.mark.parametrize(
    "case", ["ihl-4", "ihl-0", "tot-len-past-frame", "tot-len-below-ihl", "version-6", "truncated-header"]
)
def test_malformed_ipv4_header_is_dropped(plab: Lab, case: str) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    send4(plab, _malformed_ipv4(a.ip4, b.ip4)[case])
    ev = drop_of(plab, DropReason.MALFORMED_IPV4)
    assert ev.endpoint_id == a.index and ev.verdict == Verdict.DROP


def test_ipv4_frame_padding_beyond_total_length_is_fine(plab: Lab) -> None:
    """Total length below the frame length (Ethernet padding) is not malformed."""
    a, b = plab.pod("a"), plab.pod("b")
    with udp_socket(plab, socket.AF_INET) as (s, port):
        send4(plab, ipv4(a.ip4, b.ip4, UDP, udp(a.ip4, b.ip4, port, 53, b"pad")) + bytes(18))
        assert echoed(s, b"pad")


def test_truncated_l4_headers_are_dropped(plab: Lab) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    send4(plab, ipv4(a.ip4, b.ip4, UDP, udp(a.ip4, b.ip4, 4003, 53, b"")[:4]))
    ev = drop_of(plab, DropReason.MALFORMED_L4)
    assert str(ev.src) == a.ip4 and ev.proto == UDP
    syn = tcp_syn(a.ip6, b.ip6, 4004, 80, doff=4)
    send6(plab, ipv6(a.ip6, b.ip6, TCP, syn))
    ev = drop_of(plab, DropReason.MALFORMED_L4, proto=TCP)
    assert str(ev.src) == a.ip6


# --------------------------------------------------------------------------------------------- IPv6
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([HOPOPTS], id="hop-by-hop"),
        pytest.param([DSTOPTS], id="destination-options"),
        pytest.param([HOPOPTS, DSTOPTS], id="hop-by-hop+destination-options"),
    ],
)
def test_ipv6_extension_headers_before_udp(plab: Lab, headers: list[int]) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    with udp_socket(plab, socket.AF_INET6) as (s, port):
        nh, payload = chain(headers, UDP, udp(a.ip6, b.ip6, port, 53, b"ext6"))
        send6(plab, ipv6(a.ip6, b.ip6, nh, payload))
        assert echoed(s, b"ext6")
        ev = verdict_of(plab, UDP, 53)
        assert ev.verdict == Verdict.ALLOW and ev.sport == port and str(ev.src) == a.ip6
        nh, payload = chain(headers, UDP, udp(a.ip6, b.ip6, port, 5353, b"ext6"))
        send6(plab, ipv6(a.ip6, b.ip6, nh, payload))
        ev = drop_of(plab, DropReason.POLICY_DENIED, dport=5353)
        assert ev.proto == UDP and ev.sport == port


def test_ipv6_extension_headers_before_tcp(plab: Lab) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    nh, payload = chain([HOPOPTS, DSTOPTS], TCP, tcp_syn(a.ip6, b.ip6, 4005, 80))
    send6(plab, ipv6(a.ip6, b.ip6, nh, payload))
    ev = verdict_of(plab, TCP, 80)
    assert ev.verdict == Verdict.ALLOW and ev.sport == 4005
    nh, payload = chain([HOPOPTS, DSTOPTS], TCP, tcp_syn(a.ip6, b.ip6, 4005, 443))
    send6(plab, ipv6(a.ip6, b.ip6, nh, payload))
    ev = drop_of(plab, DropReason.POLICY_DENIED, dport=443)
    assert ev.proto == TCP and str(ev.dst) == b.ip6


def test_ipv6_routing_header(plab: Lab) -> None:
    """Segments left 0: walked like any extension header; segments left != 0: dropped."""
    a, b = plab.pod("a"), plab.pod("b")
    send6(plab, ipv6(a.ip6, b.ip6, ROUTING, routing(UDP, 0) + udp(a.ip6, b.ip6, 4006, 53, b"rh0")))
    ev = verdict_of(plab, UDP, 53)
    assert ev.verdict == Verdict.ALLOW and ev.sport == 4006
    send6(plab, ipv6(a.ip6, b.ip6, ROUTING, routing(UDP, 1) + udp(a.ip6, b.ip6, 4006, 53, b"rh1")))
    ev = drop_of(plab, DropReason.IPV6_ROUTING_HEADER)
    assert str(ev.src) == a.ip6


@pytest.mark.parametrize(
    "nh", [AH, 135, 139, 140, 253, 254], ids=["ah", "mobility", "hip", "shim6", "exp253", "exp254"]
)
def test_ipv6_unsupported_extension_headers_are_dropped(plab: Lab, nh: int) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    send6(plab, ipv6(a.ip6, b.ip6, nh, bytes([UDP, 0]) + bytes(6) + udp(a.ip6, b.ip6, 4007, 53, b"u")))
    ev = drop_of(plab, DropReason.IPV6_EXT_UNSUPPORTED)
    assert str(ev.src) == a.ip6 and ev.endpoint_id == a.index


def test_ipv6_unknown_next_header_is_an_l4_protocol_without_ports(plab: Lab) -> None:
    """ "Other protocols: ports 0, policy port 0": an unknown next header is judged as protocol 200."""
    a, b = plab.pod("a"), plab.pod("b")
    send6(plab, ipv6(a.ip6, b.ip6, 200, b"\0" * 16))
    ev = drop_of(plab, DropReason.POLICY_DENIED, proto=200)
    assert ev.dport == 0 and ev.sport == 0 and str(ev.dst) == b.ip6


def test_ipv6_hop_by_hop_not_first_is_malformed(plab: Lab) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    nh, payload = chain([DSTOPTS, HOPOPTS], UDP, udp(a.ip6, b.ip6, 4008, 53, b"h"))
    send6(plab, ipv6(a.ip6, b.ip6, nh, payload))
    ev = drop_of(plab, DropReason.MALFORMED_IPV6)
    assert str(ev.src) == a.ip6


def test_ipv6_long_extension_chain(plab: Lab) -> None:
    """Five extension headers are walked to the L4 header; seven are more than L7G_MAX_EXT."""
    a, b = plab.pod("a"), plab.pod("b")
    nh, payload = chain([HOPOPTS] + [DSTOPTS] * 4, UDP, udp(a.ip6, b.ip6, 4009, 53, b"5"))
    send6(plab, ipv6(a.ip6, b.ip6, nh, payload))
    ev = verdict_of(plab, UDP, 53)
    assert ev.verdict == Verdict.ALLOW and ev.sport == 4009
    nh, payload = chain([HOPOPTS] + [DSTOPTS] * (MAX_EXT), UDP, udp(a.ip6, b.ip6, 4010, 53, b"7"))
    send6(plab, ipv6(a.ip6, b.ip6, nh, payload))
    ev = drop_of(plab, DropReason.IPV6_EXT_CHAIN_TOO_LONG)
    assert str(ev.src) == a.ip6


def test_malformed_ipv6_is_dropped(plab: Lab) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    body = udp(a.ip6, b.ip6, 4011, 53, b"m")
    cases = {
        "payload-length-past-frame": ipv6(a.ip6, b.ip6, UDP, body, payload_len=len(body) + 64),
        "truncated-header": ipv6(a.ip6, b.ip6, UDP, body)[:30],
        "truncated-extension-header": ipv6(a.ip6, b.ip6, HOPOPTS, bytes([UDP])),
        # a well-formed start whose length field (255 → 2048 bytes) runs past the packet's end
        "extension-header-past-end": ipv6(a.ip6, b.ip6, HOPOPTS, bytes([UDP, 255]) + bytes(6) + body),
        "version-4": bytes([0x40]) + ipv6(a.ip6, b.ip6, UDP, body)[1:],
    }
    for case, packet in cases.items():
        send6(plab, packet)
        ev = drop_of(plab, DropReason.MALFORMED_IPV6)
        assert ev.endpoint_id == a.index, case


def test_ipv6_non_first_fragment_alone_is_dropped(plab: Lab) -> None:
    a, b = plab.pod("a"), plab.pod("b")
    send6(plab, ipv6(a.ip6, b.ip6, FRAGMENT, fragment(UDP, 185, more=False) + b"q" * 16))
    ev = drop_of(plab, DropReason.FRAG_NO_FIRST)
    assert str(ev.src) == a.ip6 and ev.proto == UDP and ev.endpoint_id == a.index
