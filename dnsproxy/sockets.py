"""Transparent listeners and the raw reply socket.

- UDP listeners are bound to the wildcard address of the proxy port with ``IP_TRANSPARENT`` (so the
  datapath can hand them packets addressed to any server) and ``IP_RECVORIGDSTADDR``: the server the
  client asked arrives with every datagram as a control message.
- TCP listeners have ``IP_TRANSPARENT``; an accepted socket's ``getsockname()`` is the server asked.
- Every listener has ``SO_REUSEPORT``, so a new proxy process (or several worker processes) can bind the
  same port while the old one still runs.
- UDP replies leave through a raw socket with ``IP_PKTINFO``/``IPV6_PKTINFO`` naming the asked server as
  the source address and a hand-built UDP header with the server's port, so the client sees the answer
  come from the server it asked. No socket is ever bound to the server's address: that would hijack a
  node-local DNS server. The raw socket drops everything it would receive (a classic BPF filter).

Python 3.11 only names ``IP_TRANSPARENT``; the other option numbers are spelled out here.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import SocketSetupError
from .sendmmsg import Outbox, Refused, SendThread, available

log = logging.getLogger(__name__)

SOL_IP = 0
SOL_IPV6 = 41
IP_TRANSPARENT = 19
IP_PKTINFO = 8
IP_RECVORIGDSTADDR = 20
IP_ORIGDSTADDR = 20
IPV6_CHECKSUM = 7
IPV6_PKTINFO = 50
IPV6_RECVORIGDSTADDR = 74
IPV6_ORIGDSTADDR = 74
IPV6_TRANSPARENT = 75
SO_ATTACH_FILTER = 26
SO_MARK = 36
SO_TIMESTAMPNS = 35  # also the control message's type (SCM_TIMESTAMPNS)
SO_MEMINFO = 55
SO_RCVBUFFORCE = 33

ANCILLARY_SIZE = socket.CMSG_SPACE(28) + socket.CMSG_SPACE(16)
"""Room for the original-destination control message (a ``sockaddr_in6`` at most) and the receive time."""
_TIMESPEC = struct.Struct("@qq")

_UDP_HEADER = struct.Struct("!HHHH")
_NO_INDEX = b"\x00\x00\x00\x00"
_SOCKADDR_IN = struct.Struct("@H2x4s8x")
_SOCKADDR_IN6 = struct.Struct("@H2xI16sI")
_CMSG_PKTINFO = struct.Struct("@Qii4x4s4s4x")  # cmsghdr + in_pktinfo, CMSG_SPACE(12) = 32 bytes
_CMSG_PKTINFO6 = struct.Struct("@Qii16s4x4x")  # cmsghdr + in6_pktinfo, CMSG_SPACE(20) = 40 bytes


def _transparent(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET:
        sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
    else:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)


def _bound(kind: int, family: int, port: int, host: str | None) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, socket.IPV6_V6ONLY, 1)
        _transparent(sock, family)
        if kind == socket.SOCK_DGRAM:
            if family == socket.AF_INET:
                sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
            else:
                sock.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
        sock.bind((host or ("0.0.0.0" if family == socket.AF_INET else "::"), port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SocketSetupError(f"cannot set up the transparent listener on port {port}: {exc}") from exc
    return sock


def udp_listener(family: int, port: int, host: str | None = None) -> socket.socket:
    """A transparent UDP listener on the wildcard address (or ``host``) and ``port``."""
    return _bound(socket.SOCK_DGRAM, family, port, host)


def tcp_listener(family: int, port: int, host: str | None = None) -> socket.socket:
    """A transparent, listening TCP socket on the wildcard address (or ``host``) and ``port``."""
    return _bound(socket.SOCK_STREAM, family, port, host)


@dataclass
class Listeners:
    """The proxy's listening sockets; the agent may create them or hand over inherited ones."""

    udp: list[socket.socket] = field(default_factory=list)
    tcp: list[socket.socket] = field(default_factory=list)

    @classmethod
    def create(cls, port: int, *, ipv4: bool = True, ipv6: bool = True) -> Listeners:
        """UDP and TCP listeners on ``port`` for each family. ``port`` 0 picks one free port for all."""
        made = cls()
        try:
            for family in ([socket.AF_INET] if ipv4 else []) + ([socket.AF_INET6] if ipv6 else []):
                made.udp.append(udp_listener(family, port))
                if port == 0:
                    port = made.udp[-1].getsockname()[1]
                made.tcp.append(tcp_listener(family, port))
        except SocketSetupError:
            made.close()
            raise
        return made

    @property
    def port(self) -> int:
        return int((self.udp or self.tcp)[0].getsockname()[1])

    def close(self) -> None:
        for sock in self.udp + self.tcp:
            sock.close()


def stamp_arrivals(sock: socket.socket) -> None:
    """Have the kernel give each datagram's arrival time (``SO_TIMESTAMPNS``; see :func:`arrival`)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError as exc:
        raise SocketSetupError(f"cannot ask for arrival times on the listener: {exc}") from exc


def receive_buffer(sock: socket.socket, size: int) -> int:
    """Let ``sock`` queue up to about ``size`` bytes of datagrams (``SO_RCVBUFFORCE``, past the
    ``net.core.rmem_max`` cap, else ``SO_RCVBUF`` within it; never shrunk). Returns the kernel's
    limit on queued memory (twice what was asked: it counts its own overhead)."""
    current = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if current < 2 * size:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:  # without CAP_NET_ADMIN: as much as rmem_max allows
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def queued_bytes(sock: socket.socket) -> int:
    """Memory taken by the datagrams waiting in ``sock`` (``SO_MEMINFO`` RMEM_ALLOC; -1 if unknown).

    The backlog measure when the arrival time is not usable: a packet crossing network namespaces
    (veth, the datapath's redirect) has its timestamp scrubbed, so the kernel stamps it at ``recvmsg``.
    """
    try:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36)[:4], "little")
    except OSError:
        return -1


def arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """When the kernel received a datagram (unix seconds; 0.0 when the control message is missing)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds + nanoseconds * 1e-9)
    return 0.0


def original_destination(ancillary: list[tuple[int, int, bytes]]) -> tuple[bytes, int] | None:
    """The original destination (packed address, port) from a datagram's control messages."""
    for level, kind, data in ancillary:
        if level == SOL_IP and kind == IP_ORIGDSTADDR and len(data) >= 8:
            return data[4:8], (data[2] << 8) | data[3]
        if level == SOL_IPV6 and kind == IPV6_ORIGDSTADDR and len(data) >= 24:
            return data[8:24], (data[2] << 8) | data[3]
    return None


def _drop_all(sock: socket.socket) -> None:
    """Attach a classic BPF filter that accepts nothing (``ret #0``)."""
    program = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    fprog = struct.pack("HL", 1, ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    while True:  # whatever was queued before the filter was attached
        try:
            sock.recv(65535, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break


class RawReplySocket:
    """Sends UDP datagrams from any (server) address: a raw socket per family."""

    def __init__(self, family: int, sender: SendThread | None = None) -> None:
        self.family = family
        try:
            sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP)
        except OSError as exc:
            raise SocketSetupError(f"cannot open the raw reply socket: {exc}") from exc
        try:
            _transparent(sock, family)
            if family == socket.AF_INET6:
                sock.setsockopt(SOL_IPV6, IPV6_CHECKSUM, 6)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            _drop_all(sock)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SocketSetupError(f"cannot configure the raw reply socket: {exc}") from exc
        self._sock = sock
        self._level = SOL_IP if family == socket.AF_INET else SOL_IPV6
        self._kind = IP_PKTINFO if family == socket.AF_INET else IPV6_PKTINFO
        self._outbox = Outbox(sock, sender) if available() else None
        self.failed = 0
        """Queued replies the kernel refused (see :meth:`flush`)."""

    def send(self, payload: bytes, source: tuple[bytes, int], destination: tuple[Any, ...]) -> None:
        """Send ``payload`` from ``source`` (packed address, port) to ``destination`` (the client's
        address as ``recvmsg`` gave it).

        Raises ``OSError``; the IPv4 UDP checksum is left 0 (none), IPv6's is filled in by the kernel.
        """
        address, port = source
        header = _UDP_HEADER.pack(port, destination[1], 8 + len(payload), 0)
        if self.family == socket.AF_INET:
            info = _NO_INDEX + address + _NO_INDEX
            self._sock.sendmsg([header, payload], [(self._level, self._kind, info)], 0, (destination[0], 0))
        else:
            info = address + _NO_INDEX
            target = (destination[0], 0, 0, destination[3])
            self._sock.sendmsg([header, payload], [(self._level, self._kind, info)], 0, target)

    def queue(self, payload: bytes, source: tuple[bytes, int], destination: tuple[Any, ...]) -> None:
        """Like :meth:`send`, but gathered: the datagram leaves with the others at the next
        :meth:`flush` (one ``sendmmsg``), or at once when ``sendmmsg`` is not available. Raises
        ``OSError`` (only when sent at once)."""
        batch = self._outbox.batch if self._outbox is not None else None
        size = 8 + len(payload)
        if batch is not None and not batch.fits(size):
            self.flush()
            batch = self._outbox.batch if self._outbox is not None else None
        if batch is None or not batch.fits(size):
            self.send(payload, source, destination)
            return
        address, port = source
        datagram = _UDP_HEADER.pack(port, destination[1], size, 0) + payload
        if self.family == socket.AF_INET:
            name = _SOCKADDR_IN.pack(socket.AF_INET, socket.inet_pton(socket.AF_INET, destination[0]))
            control = _CMSG_PKTINFO.pack(28, self._level, self._kind, address, _NO_INDEX)
        else:
            name = _SOCKADDR_IN6.pack(
                socket.AF_INET6, 0, socket.inet_pton(socket.AF_INET6, destination[0]), destination[3]
            )
            control = _CMSG_PKTINFO6.pack(36, self._level, self._kind, address)
        batch.add(datagram, name, control)

    def flush(self) -> None:
        """Send the queued replies (one system call for up to a batch, maybe from the send thread);
        those the kernel refuses are counted in ``failed``."""
        if self._outbox is not None:
            self._outbox.flush(self._refused)

    def _refused(self, refused: Refused) -> None:
        if refused:
            self.failed += len(refused)
            log.warning("%d replies refused by the kernel (errno %d)", len(refused), refused[-1][1])

    def close(self) -> None:
        self._sock.close()
