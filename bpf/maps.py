"""Map layouts of the datapath (ctypes mirrors of ``bpf/lib/maps.h``) and pure pack/unpack helpers.

No kernel access here: :mod:`bpf.loader` moves the bytes, this module says what they mean.
A root test compares every structure with the layout bcc derived from the C source.

Byte order: addresses and ports (``__be16``) are network order; every other integer is host order
(x86-64, little endian).
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import socket
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from bpf.reasons import DropReason, EventType, Hook, Verdict

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

AF_INET = 2
AF_INET6 = 10

# Reserved identities (Cilium numbering). An ipcache miss yields IDENTITY_WORLD for both families.
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_WORLD_IPV4 = 9
IDENTITY_WORLD_IPV6 = 10

# The host endpoint's id (``HOST_ENDPOINT_ID`` in bpf/lib/common.h): no ifindex can be this.
HOST_ENDPOINT_ID = 0xFFFFFFFE

# skb marks (see bpf/lib/common.h).
MARK_MASK = 0x0F00
MARK_TO_PROXY = 0x0200  # packets assigned to a proxy socket; routed by the fwmark rule
MARK_FROM_PROXY = 0x0A00  # SO_MARK of proxies' upstream sockets
MARK_JUDGED = 0x0100  # set by the ingress hooks on packets they allowed

# Policy routing for redirected packets (installed by bpf.attach).
PROXY_ROUTE_TABLE = 2004
PROXY_RULE_PRIORITY = 100


@dataclasses.dataclass(frozen=True)
class MapSizes:
    """Maximum entries of the maps whose size is a setting (``-DL7G_*_MAX`` when compiling). A pinned
    map of another size is refused (remove the pins to resize). When a map is full, a new entry is
    refused by the kernel: what it would have allowed stays denied."""

    ipcache: int = 65536
    policy: int = 65536
    ct: int = 65536

    def __post_init__(self) -> None:
        for name in ("ipcache", "policy", "ct"):
            value = getattr(self, name)
            if not 1 <= value <= 1 << 24:
                raise ValueError(f"map size {name}={value} is out of range 1-{1 << 24}")


# The node's proxy ports (``l7g_proxy_ports``): the ports its Envoy listeners and DNS proxy sockets use, per
# protocol, written by the agent; the tc programs drop TCP/UDP sent straight to a node address on one of them
# (DropReason.PROXY_PORT_DIRECT). Any other port of the node is left alone. ``L7G_PROXY_PORTS_MAX`` in C.
PROXY_PORTS_MAX = 32768
PROXY_PORT_PROTOCOLS = (6, 17)  # TCP and UDP: each proxy port is protected for both

# Policy key prefix lengths: fixed part (endpoint, peer, dir) = 72 bits, + proto = 80, + port = 96.
POLICY_PREFIX_ANY_PROTO = 72
POLICY_PREFIX_PROTO = 80
POLICY_PREFIX_FULL = 96


class Direction(IntEnum):
    """Policy direction (``DIR_*``)."""

    INGRESS = 0
    EGRESS = 1


class Action(IntEnum):
    """Policy map action (``ACT_*``)."""

    NONE = 0
    ALLOW = 1
    DENY = 2
    REDIRECT = 3


class EndpointFlags(IntFlag):
    """Endpoint flags (``EP_F_*``)."""

    NONE = 0
    INGRESS_ENFORCED = 0x1
    EGRESS_ENFORCED = 0x2
    AUDIT = 0x4


class DeviceKind(IntEnum):
    """What a device in ``l7g_devices`` is (``DEV_*``)."""

    ENDPOINT = 1
    UPLINK = 2


class Config(IntEnum):
    """Indices of the config array map (``CFG_*``); values are u64, 0 = default."""

    VERDICT_EVENTS = 0
    CT_TCP_SYN_NS = 1
    CT_TCP_EST_NS = 2
    CT_TCP_FIN_NS = 3
    CT_UDP_NS = 4
    CT_OTHER_NS = 5
    FROM_PROXY_MARK = 6
    FROM_PROXY_MASK = 7
    FRAG_NS = 8
    POLICY_REV = 9


CONFIG_SIZE = 16

CT_F_SEEN_REPLY = 0x1
CT_F_CLOSING = 0x2
CT_F_FROM_PROXY = 0x4

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64


class EndpointValue(ctypes.Structure):
    """``struct l7g_endpoint`` — value of ``endpoints`` (by ifindex) and ``endpoint_ids`` (by id)."""

    _fields_ = (("endpoint_id", u32), ("identity", u32), ("flags", u32), ("ifindex", u32))


class IpcacheKey(ctypes.Structure):
    """``struct l7g_ipcache_key``; prefixlen = 32 + the address prefix length."""

    _fields_ = (("prefixlen", u32), ("family", u8), ("pad", u8 * 3), ("addr", u8 * 16))


class IpcacheValue(ctypes.Structure):
    """``struct l7g_ipcache_value``."""

    _fields_ = (("identity", u32), ("endpoint_id", u32), ("flags", u32))


class PolicyKey(ctypes.Structure):
    """``struct l7g_policy_key``; ``dport`` is network order."""

    _fields_ = (
        ("prefixlen", u32),
        ("endpoint_id", u32),
        ("peer_identity", u32),
        ("dir", u8),
        ("proto", u8),
        ("dport", u16),
    )


class PolicyValue(ctypes.Structure):
    """``struct l7g_policy_value``."""

    _fields_ = (("action", u8), ("pad", u8), ("proxy_port", u16))


class ProxyPortKey(ctypes.Structure):
    """``struct l7g_proxy_port_key``; ``port`` is network order."""

    _fields_ = (("port", u16), ("proto", u8), ("pad", u8))


class CtKey(ctypes.Structure):
    """``struct l7g_ct_key`` — the originator's tuple; ports network order."""

    _fields_ = (
        ("family", u8),
        ("proto", u8),
        ("sport", u16),
        ("dport", u16),
        ("pad", u16),
        ("saddr", u8 * 16),
        ("daddr", u8 * 16),
    )


class CtValue(ctypes.Structure):
    """``struct l7g_ct_entry``."""

    _fields_ = (
        ("expires_ns", u64),
        ("last_seen_ns", u64),
        ("pkts_fwd", u64),
        ("pkts_rev", u64),
        ("src_identity", u32),
        ("dst_identity", u32),
        ("endpoint_id", u32),
        ("proxy_port", u16),
        ("verdict", u8),
        ("flags", u8),
        ("rev", u32),
        ("pad", u32),
    )


class FragKey(ctypes.Structure):
    """``struct l7g_frag_key``."""

    _fields_ = (
        ("family", u8),
        ("proto", u8),
        ("pad", u16),
        ("id", u32),
        ("saddr", u8 * 16),
        ("daddr", u8 * 16),
    )


class FragValue(ctypes.Structure):
    """``struct l7g_frag_entry``."""

    _fields_ = (("expires_ns", u64), ("sport", u16), ("dport", u16), ("pad", u32))


class EventRecord(ctypes.Structure):
    """``struct l7g_event`` — one ring buffer record."""

    _fields_ = (
        ("ts_ns", u64),
        ("type", u8),
        ("hook", u8),
        ("family", u8),
        ("proto", u8),
        ("verdict", u8),
        ("pad", u8),
        ("reason", u16),
        ("sport", u16),
        ("dport", u16),
        ("proxy_port", u16),
        ("pad2", u16),
        ("ifindex", u32),
        ("endpoint_id", u32),
        ("src_identity", u32),
        ("dst_identity", u32),
        ("saddr", u8 * 16),
        ("daddr", u8 * 16),
    )


@dataclass(frozen=True)
class MapSpec:
    """Name, kind and layout of one map (what the loader checks a pinned map against)."""

    name: str  # the C name; the pin file is the part after "l7g_"
    kind: str  # bcc table type
    key: type[ctypes.Structure] | type[ctypes.c_uint32]
    value: type[ctypes.Structure] | type[ctypes.c_uint32] | type[ctypes.c_uint64]
    pinned: bool = True

    @property
    def pin_name(self) -> str:
        return self.name.removeprefix("l7g_")


MAP_SPECS: tuple[MapSpec, ...] = (
    MapSpec("l7g_endpoints", "hash", u32, EndpointValue),
    MapSpec("l7g_endpoint_ids", "hash", u32, EndpointValue),
    MapSpec("l7g_ipcache", "lpm_trie", IpcacheKey, IpcacheValue),
    MapSpec("l7g_policy", "lpm_trie", PolicyKey, PolicyValue),
    MapSpec("l7g_ct", "lru_hash", CtKey, CtValue),
    MapSpec("l7g_frags", "lru_hash", FragKey, FragValue),
    MapSpec("l7g_config", "array", u32, u64),
    MapSpec("l7g_devices", "hash", u32, u32),
    MapSpec("l7g_proxy_ports", "hash", ProxyPortKey, u32),
)


def _family(addr: IPAddress | IPNetwork) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


def _addr16(addr: IPAddress) -> bytes:
    return addr.packed.ljust(16, b"\0")


def _unaddr(family: int, raw: bytes) -> IPAddress:
    if family == AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw[:16])


def ipcache_key(prefix: IPNetwork | IPAddress) -> IpcacheKey:
    """The LPM key of an address or prefix (an address is its host prefix)."""
    net = ipaddress.ip_network(prefix, strict=True) if not isinstance(prefix, IPNetwork) else prefix
    key = IpcacheKey()
    key.prefixlen = 32 + net.prefixlen
    key.family = _family(net)
    key.addr[:] = list(_addr16(net.network_address))
    return key


def ipcache_prefix(key: IpcacheKey | bytes) -> IPNetwork:
    """Inverse of :func:`ipcache_key`, from the key or its bytes as a map read gives them (decoded
    from the bytes: 55,000 keys read back at a restart)."""
    raw = bytes(key)
    length = int.from_bytes(raw[0:4], "little") - 32
    if raw[4] == AF_INET:
        addr = raw[8:12]
        return ipaddress.IPv4Network(addr if length == 32 else (int.from_bytes(addr, "big"), length))
    addr = raw[8:24]
    return ipaddress.IPv6Network(addr if length == 128 else (int.from_bytes(addr, "big"), length))


def ipcache_value(identity: int, endpoint_id: int = 0, flags: int = 0) -> IpcacheValue:
    return IpcacheValue(identity=identity, endpoint_id=endpoint_id, flags=flags)


def policy_key(
    endpoint_id: int,
    direction: Direction,
    peer_identity: int,
    proto: int | None,
    port: int = 0,
    *,
    port_prefix: int = 16,
) -> PolicyKey:
    """A policy LPM key. ``proto`` None = any protocol (and port); ``port_prefix`` = port bits that
    must match (0 = any port of ``proto``)."""
    key = PolicyKey()
    key.endpoint_id = endpoint_id
    key.peer_identity = peer_identity
    key.dir = int(direction)
    if proto is None:
        key.prefixlen = POLICY_PREFIX_ANY_PROTO
        return key
    if not 0 <= port_prefix <= 16:
        raise ValueError(f"port prefix length {port_prefix} out of 0..16")
    key.proto = proto
    key.prefixlen = POLICY_PREFIX_PROTO + port_prefix
    key.dport = socket.htons(port)
    return key


def proxy_port_key(port: int, proto: int) -> ProxyPortKey:
    """The ``l7g_proxy_ports`` key of ``port`` (host order) and an IP protocol number."""
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"proxy port {port} out of 1..65535")
    return ProxyPortKey(port=socket.htons(port), proto=proto)


def proxy_port_of(key: ProxyPortKey) -> tuple[int, int]:
    """Inverse of :func:`proxy_port_key`: (port, protocol)."""
    return socket.ntohs(key.port), key.proto


def policy_value(action: Action, proxy_port: int = 0) -> PolicyValue:
    return PolicyValue(action=int(action), proxy_port=proxy_port)


def endpoint_value(endpoint_id: int, identity: int, flags: EndpointFlags, ifindex: int) -> EndpointValue:
    return EndpointValue(endpoint_id=endpoint_id, identity=identity, flags=int(flags), ifindex=ifindex)


@dataclass(frozen=True)
class Event:
    """A decoded datapath event (drop, or policy verdict when verdict events are on)."""

    ts_ns: int
    type: EventType
    hook: Hook
    verdict: Verdict
    reason: DropReason
    proto: int
    src: IPAddress | None
    dst: IPAddress | None
    sport: int
    dport: int
    ifindex: int
    endpoint_id: int
    src_identity: int
    dst_identity: int
    proxy_port: int

    @classmethod
    def from_bytes(cls, data: bytes) -> Event:
        rec = EventRecord.from_buffer_copy(data[: ctypes.sizeof(EventRecord)])
        fam = rec.family
        src = _unaddr(fam, bytes(rec.saddr)) if fam in (AF_INET, AF_INET6) else None
        dst = _unaddr(fam, bytes(rec.daddr)) if fam in (AF_INET, AF_INET6) else None
        return cls(
            ts_ns=rec.ts_ns,
            type=EventType(rec.type),
            hook=Hook(rec.hook),
            verdict=Verdict(rec.verdict),
            reason=DropReason(rec.reason),
            proto=rec.proto,
            src=src,
            dst=dst,
            sport=socket.ntohs(rec.sport),
            dport=socket.ntohs(rec.dport),
            ifindex=rec.ifindex,
            endpoint_id=rec.endpoint_id,
            src_identity=rec.src_identity,
            dst_identity=rec.dst_identity,
            proxy_port=rec.proxy_port,
        )


@dataclass(frozen=True)
class CtEntry:
    """A decoded conntrack entry (key = the originator's tuple)."""

    proto: int
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    expires_ns: int
    last_seen_ns: int
    pkts_fwd: int
    pkts_rev: int
    src_identity: int
    dst_identity: int
    endpoint_id: int
    proxy_port: int
    verdict: Verdict
    flags: int

    @classmethod
    def from_bytes(cls, key: bytes, value: bytes) -> CtEntry:
        k = CtKey.from_buffer_copy(key)
        v = CtValue.from_buffer_copy(value)
        return cls(
            proto=k.proto,
            src=_unaddr(k.family, bytes(k.saddr)),
            dst=_unaddr(k.family, bytes(k.daddr)),
            sport=socket.ntohs(k.sport),
            dport=socket.ntohs(k.dport),
            expires_ns=v.expires_ns,
            last_seen_ns=v.last_seen_ns,
            pkts_fwd=v.pkts_fwd,
            pkts_rev=v.pkts_rev,
            src_identity=v.src_identity,
            dst_identity=v.dst_identity,
            endpoint_id=v.endpoint_id,
            proxy_port=v.proxy_port,
            verdict=Verdict(v.verdict),
            flags=v.flags,
        )
