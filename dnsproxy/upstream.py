"""Forwarding to the server the client asked: fresh ID, fresh source port, one deadline per query.

UDP (:class:`UdpUpstream`): per server a small pool of sockets *connected* to it (the route is looked
up once, the kernel drops datagrams from anyone else) on kernel-chosen random ports — for the first
:data:`MAX_SERVERS` servers; queries to further servers share one pool of unconnected sockets. Each
socket is retired after a number of queries and replaced by a new one (new port), so source ports keep
changing without a socket per query. Every query gets a random ID unused on its socket. A datagram is
accepted only from the server asked, with the pending ID and the same question; anything else is
ignored (and counted). The queries sent while the event loop runs its ready callbacks leave together:
one ``sendmmsg`` per socket (:mod:`.sendmmsg`; large batches from the send thread); a query the
kernel refuses is reported to ``on_error``.
Queries are registered in deadline order (the timeout is the same for all), so expiry is a deque and a
single timer; an expired query is reported at most :data:`SWEEP_INTERVAL` late.

TCP (:func:`tcp_exchange`): a new connection (so a new source port) per query, one length-prefixed
exchange, answers that do not match the ID and question are skipped until the deadline.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from .errors import UpstreamError, UpstreamTimeout
from .sendmmsg import Outbox, Refused, SendThread, available
from .sockets import SO_MARK
from .wire import reply_matches

SWEEP_INTERVAL = 0.01
MAX_SERVERS = 16
"""Servers that get their own connected sockets (per address family); the rest share unconnected ones."""
BATCH_AREA = 32 * 1024
"""Bytes of queries a socket's batch holds (64 queries of ~500 bytes; a query is at most 4 KiB, and one
that does not fit an empty batch is sent alone): with :data:`MAX_SERVERS` and the pool size this bounds
the batches' memory (~2.5 MB at the most, per family)."""
_LENGTH = struct.Struct("!H")
_FAMILY = struct.Struct("@H")


class _Random:
    """Cheap unpredictable 16-bit numbers: ``os.urandom`` drawn in blocks."""

    def __init__(self) -> None:
        self._block = memoryview(b"")
        self._pos = 0

    def u16(self) -> int:
        if self._pos >= len(self._block):
            self._block = memoryview(os.urandom(4096)).cast("H")
            self._pos = 0
        value = int(self._block[self._pos])
        self._pos += 1
        return value


class Pending:
    """One UDP query waiting for its upstream answer. ``context`` belongs to the caller."""

    __slots__ = ("_slot", "context", "deadline", "question", "sent_at", "server", "upstream_id")

    def __init__(self, server: tuple[Any, ...], question: bytes, deadline: float, context: Any) -> None:
        self.server = server
        self.question = question
        self.deadline = deadline
        self.context = context
        self.sent_at = 0.0
        self.upstream_id = -1
        self._slot: _Slot | None = None


class _Slot:
    __slots__ = ("outbox", "pending", "pool", "queued", "retired", "sock", "uses")

    def __init__(self, sock: socket.socket, pool: tuple[Any, ...] | None, sender: SendThread | None) -> None:
        self.sock = sock
        self.pool = pool
        """The server this socket is connected to; None: unconnected (shared pool)."""
        self.pending: dict[int, Pending] = {}
        self.uses = 0
        self.retired = False
        self.outbox = Outbox(sock, sender, BATCH_AREA) if available() else None
        self.queued: list[Pending] = []
        """Queries in the outbox's batch, in order."""


OnReply = Callable[[Pending, bytes], None]
OnTimeout = Callable[[Pending], None]


class UdpUpstream:
    """The UDP forwarding pool of one address family, driven by the running event loop."""

    def __init__(
        self,
        family: int,
        on_reply: OnReply,
        on_timeout: OnTimeout,
        *,
        pool_size: int = 4,
        uses_per_socket: int = 2048,
        mark: int | None = None,
        on_error: OnTimeout | None = None,
        sender: SendThread | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sender = sender
        self._family = family
        self._on_reply = on_reply
        self._on_timeout = on_timeout
        self._uses = uses_per_socket
        self._mark = mark
        self._random = _Random()
        self._pool_size = pool_size
        self._on_error = on_error or on_timeout
        shared = [self._open(None) for _ in range(pool_size)]
        self._pools: dict[tuple[Any, ...] | None, list[_Slot]] = {None: shared}
        self._retired: list[_Slot] = []
        self._unsent: list[_Slot] = []
        """Slots with queries queued for the next :meth:`flush` (scheduled with ``call_soon``)."""
        self._expiry: deque[Pending] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.ignored = 0
        """Datagrams dropped: unknown ID, wrong source or a different question."""

    def _open(self, server: tuple[Any, ...] | None) -> _Slot:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            if self._mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self._mark)
            sock.bind(("0.0.0.0" if self._family == socket.AF_INET else "::", 0))
            sock.setblocking(False)
            if server is not None:
                sock.connect(server)
        except OSError as exc:
            sock.close()
            raise UpstreamError(f"cannot open an upstream socket: {exc}") from exc
        slot = _Slot(sock, server, self._sender)
        self._loop.add_reader(sock.fileno(), self._readable, slot)
        return slot

    def _pool(self, server: tuple[Any, ...]) -> list[_Slot]:
        pool = self._pools.get(server)
        if pool is not None:
            return pool
        if len(self._pools) > MAX_SERVERS:
            return self._pools[None]
        try:
            pool = [self._open(server) for _ in range(self._pool_size)]
        except UpstreamError:
            return self._pools[None]
        self._pools[server] = pool
        return pool

    def _close(self, slot: _Slot) -> None:
        self._loop.remove_reader(slot.sock.fileno())
        slot.sock.close()

    @property
    def in_flight(self) -> int:
        return sum(len(slot.pending) for slot in self._all())

    def _all(self) -> list[_Slot]:
        return [slot for pool in self._pools.values() for slot in pool] + self._retired

    def send(self, pending: Pending, message: bytes) -> None:
        """Send ``message`` (its ID is replaced) for ``pending``. Raises :class:`UpstreamError`."""
        rand = self._random
        pool = self._pool(pending.server)
        slot = pool[rand.u16() % len(pool)]
        ident = rand.u16()
        while ident in slot.pending:
            ident = rand.u16()
        datagram = ident.to_bytes(2, "big") + message[2:]
        batch = slot.outbox.batch if slot.outbox is not None else None
        if batch is not None and not batch.fits(len(datagram)):
            self._flush_slot(slot)
            batch = slot.outbox.batch if slot.outbox is not None else None
        if batch is not None and batch.fits(len(datagram)):
            batch.add(datagram, b"" if slot.pool is not None else self._name(pending.server))
            slot.queued.append(pending)
            if len(slot.queued) == 1:
                if not self._unsent:
                    self._loop.call_soon(self.flush)
                self._unsent.append(slot)
        else:
            try:
                if slot.pool is not None:
                    slot.sock.send(datagram)
                else:
                    slot.sock.sendto(datagram, pending.server)
            except OSError as exc:
                raise UpstreamError(f"cannot send to {pending.server[0]}: {exc}") from exc
        pending.upstream_id = ident
        pending._slot = slot
        pending.sent_at = self._loop.time()
        slot.pending[ident] = pending
        self._expiry.append(pending)
        if self._timer is None:
            self._timer = self._loop.call_at(pending.deadline, self._sweep)
        slot.uses += 1
        if slot.uses >= self._uses:
            self._retire(slot)

    def _name(self, server: tuple[Any, ...]) -> bytes:
        """The packed ``sockaddr`` of ``server`` (for an unconnected socket)."""
        port = int(server[1]).to_bytes(2, "big")
        if self._family == socket.AF_INET:
            address = socket.inet_pton(socket.AF_INET, server[0])
            return _FAMILY.pack(socket.AF_INET) + port + address + bytes(8)
        scope = server[3] if len(server) > 3 else 0
        return (
            _FAMILY.pack(socket.AF_INET6)
            + port
            + bytes(4)
            + socket.inet_pton(socket.AF_INET6, server[0])
            + struct.pack("@I", scope)
        )

    def flush(self) -> None:
        """Send the queries queued on every socket (one ``sendmmsg`` each); those the kernel refuses
        are taken back and reported to ``on_error``."""
        unsent, self._unsent = self._unsent, []
        for slot in unsent:
            self._flush_slot(slot)

    def _flush_slot(self, slot: _Slot) -> None:
        queued, slot.queued = slot.queued, []
        if slot.outbox is None or not queued or slot.sock.fileno() < 0:
            return
        loop = self._loop

        def sent(refused: Refused) -> None:  # maybe in the send thread
            if refused:
                loop.call_soon_threadsafe(self._refused, slot, queued, refused)

        slot.outbox.flush(sent)
        if slot.retired:
            self._release(slot)

    def _refused(self, slot: _Slot, queued: list[Pending], refused: Refused) -> None:
        for index, _error in refused:
            pending = queued[index]
            if slot.pending.pop(pending.upstream_id, None) is None:
                continue  # answered or expired meanwhile
            pending._slot = None
            self._on_error(pending)
        if slot.retired:
            self._release(slot)

    def _retire(self, slot: _Slot) -> None:
        try:
            fresh = self._open(slot.pool)
        except UpstreamError:
            slot.uses = 0  # keep using the old socket rather than failing queries
            return
        pool = self._pools[slot.pool]
        pool[pool.index(slot)] = fresh
        slot.retired = True
        if slot.pending:
            self._retired.append(slot)
        else:
            self._close(slot)

    def _release(self, slot: _Slot) -> None:
        if slot.retired and not slot.pending and not slot.queued:
            self._retired.remove(slot)
            self._close(slot)

    def _readable(self, slot: _Slot) -> None:
        recvfrom = slot.sock.recvfrom
        connected = slot.pool is not None  # the kernel only hands over the server's datagrams
        for _ in range(64):
            try:
                data, address = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable reported on the socket: the query will time out
                continue
            if len(data) < 12:
                self.ignored += 1
                continue
            pending = slot.pending.get((data[0] << 8) | data[1])
            if (
                pending is None
                or (not connected and (address[0], address[1]) != (pending.server[0], pending.server[1]))
                or not reply_matches(data, pending.question)
            ):
                self.ignored += 1
                continue
            del slot.pending[pending.upstream_id]
            pending._slot = None
            self._on_reply(pending, data)
            if slot.retired and not slot.pending:
                self._release(slot)
                return

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        expiry = self._expiry
        while expiry and expiry[0].deadline <= now:
            pending = expiry.popleft()
            slot = pending._slot
            if slot is None:
                continue
            del slot.pending[pending.upstream_id]
            pending._slot = None
            if slot.retired:
                self._release(slot)
            self._on_timeout(pending)
        if expiry:
            self._timer = self._loop.call_at(max(expiry[0].deadline, now + SWEEP_INTERVAL), self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for slot in self._all():
            self._close(slot)
        self._pools = {}
        self._retired = []
        self._unsent = []
        self._expiry.clear()


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise UpstreamError("the upstream server closed the connection")
        data += chunk
    return data


async def tcp_exchange(
    family: int,
    server: tuple[Any, ...],
    message: bytes,
    question: bytes,
    deadline: float,
    *,
    mark: int | None = None,
    random_id: int | None = None,
) -> bytes:
    """Send ``message`` over a new TCP connection to ``server`` with a fresh ID; return the matching
    answer (with the fresh ID). Raises :class:`UpstreamTimeout` at ``deadline`` (loop time) and
    :class:`UpstreamError` when the server fails."""
    loop = asyncio.get_running_loop()
    ident = random_id if random_id is not None else int.from_bytes(os.urandom(2), "big")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        sock.setblocking(False)
        async with asyncio.timeout_at(deadline):
            await loop.sock_connect(sock, server)
            await loop.sock_sendall(sock, _LENGTH.pack(len(message)) + ident.to_bytes(2, "big") + message[2:])
            while True:
                (length,) = _LENGTH.unpack(await _read_exactly(loop, sock, 2))
                answer = await _read_exactly(loop, sock, length)
                if (
                    len(answer) >= 12
                    and (answer[0] << 8) | answer[1] == ident
                    and reply_matches(answer, question)
                ):
                    return answer
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except OSError as exc:
        raise UpstreamError(f"TCP exchange with {server[0]} failed: {exc}") from exc
    finally:
        sock.close()
