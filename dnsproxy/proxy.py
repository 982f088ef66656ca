"""The transparent DNS proxy server and its reply contract.

Per query (UDP or TCP, IPv4 or IPv6):

- malformed (unparsable, not exactly one question) → FORMERR; dropped when too short to echo a header
  or when it is itself a response;
- an opcode other than QUERY or a class other than IN → REFUSED (verdict ``unsupported``);
- overload → REFUSED (verdict ``overload``, counted in ``ProxyStats.overload_refusals``), nothing sent
  upstream: too many queries in flight (``max_in_flight``, which also bounds the in-flight table), or
  while more than ``max_queue_bytes`` (1 MiB, ~1,300 queries) wait in the UDP listening socket
  (``SO_MEMINFO``, checked once per batch read; the socket's receive buffer is raised to
  ``receive_buffer`` so the check comes long before the kernel drops), or a UDP query that waited in
  it longer than ``max_queue_delay`` (the kernel's arrival time, ``SO_TIMESTAMPNS``: only for clients
  in the proxy's namespace, the stamp is scrubbed when a packet crosses namespaces) — below capacity
  nothing is refused, beyond it the excess gets a fast answer instead of queueing until the kernel
  drops it, the queries served keep a bounded delay, and there is nothing to recover from when the
  load drops;
- ``decide`` says :class:`~dnsproxy.policy.Refused` → REFUSED (or NXDOMAIN, configurable), the question
  echoed, ID and RD kept, and nothing is sent upstream;
- allowed → forwarded over the same transport to the server and port the client asked, with a fresh ID
  and source port; no usable answer before the deadline → SERVFAIL;
- the answer's A/AAAA records on the query name's CNAME chain go to ``on_answer`` *before* the answer is
  released; if ``on_answer`` fails or misses the deadline → SERVFAIL (fail closed);
- the client gets the server's answer with its own ID restored, from the server's address.

The UDP path runs in reader callbacks with no task per query (a task is created only when ``on_answer``
returns an awaitable); TCP connections are tasks, with queries on one connection answered concurrently.
A TCP connection is not read further while its client leaves the replies unread (backpressure), and
is closed when that lasts ``tcp_idle_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any

from . import wire
from .answers import answer_ips
from .errors import MalformedMessage, UpstreamError, UpstreamTimeout
from .metrics import ProxyStats
from .policy import Allowed, Decide, OnAnswer, OnEvent, Protocol_, QueryEvent
from .sendmmsg import SendThread
from .sockets import (
    ANCILLARY_SIZE,
    Listeners,
    RawReplySocket,
    arrival,
    original_destination,
    queued_bytes,
    receive_buffer,
    stamp_arrivals,
)
from .upstream import Pending, UdpUpstream, tcp_exchange

log = logging.getLogger(__name__)

RECEIVE_SIZE = 4096
"""Largest UDP query accepted (a truncated datagram is dropped)."""
BATCH = 64
"""Datagrams read per wake-up before yielding to the event loop."""
_NO_IPS: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ProxyConfig:
    timeout: float = 2.0
    """Seconds from receiving a query to answering it: one deadline for everything the query awaits."""
    refuse_rcode: int = wire.REFUSED
    """The rcode for queries the policy does not allow: REFUSED (default) or NXDOMAIN."""
    max_in_flight: int = 4096
    """Queries forwarded and not yet answered; beyond this, new queries get REFUSED."""
    max_queue_delay: float | None = 0.5
    """Seconds a UDP query may have waited in the listening socket; older ones get REFUSED (None: no
    limit). The kernel's arrival time (``SO_TIMESTAMPNS``) is only known for clients in the proxy's
    own namespace: a packet crossing namespaces has it scrubbed (see ``max_queue_bytes``)."""
    max_queue_bytes: int | None = 1024 * 1024
    """Backlog of a UDP listening socket (kernel memory, ~0.8 KiB per small query) above which a batch
    of queries read gets REFUSED (None: no limit); at most half of the socket's receive buffer, so the
    check (once per batch) comes well before the kernel drops. 1 MiB is ~1,300 queries: ~0.1-0.2 s
    of work at capacity, never reached below capacity unless the proxy stalls that long. Not in the
    first ``timeout`` seconds after start: the backlog a restart left in kept sockets is served."""
    receive_buffer: int = 4 * 1024 * 1024
    """``SO_RCVBUF`` asked for the UDP listeners (the kernel allows twice this in queued memory):
    room for bursts and for the backlog check to act before datagrams are dropped."""
    upstream_sockets: int = 4
    """UDP sockets per family used to forward queries; each is replaced after ``uses_per_socket``."""
    uses_per_socket: int = 2048
    mark: int | None = None
    """SO_MARK for upstream sockets, so the datapath recognises the proxy's own queries."""
    tcp_idle_timeout: float = 10.0
    send_thread: bool = False
    """Replies and upstream queries batched under load are sent by a second thread (the kernel's work,
    GIL released, may overlap the loop's on another core); a few at a time are sent by the event
    loop's thread. Off by default: on the 2-core bench machine it cost more CPU per query (GIL
    hand-offs) than it saved, for the same throughput (docs/dnsproxy.md)."""

    def __post_init__(self) -> None:
        if self.refuse_rcode not in (wire.REFUSED, wire.NXDOMAIN):
            raise ValueError("refuse_rcode must be REFUSED (5) or NXDOMAIN (3)")
        if self.timeout <= 0 or self.max_in_flight < 1 or self.upstream_sockets < 1:
            raise ValueError("timeout, max_in_flight and upstream_sockets must be positive")


class _Immediate:
    """The proxy answers itself (or drops, when ``reply`` is None)."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply


class DNSProxy:
    """The transparent DNS proxy. It owns ``listeners`` (closes them on :meth:`aclose`).

    Use ``async with DNSProxy(...)`` or :meth:`start` / :meth:`aclose` inside a running event loop.
    """

    def __init__(
        self,
        listeners: Listeners,
        decide: Decide,
        on_answer: OnAnswer,
        *,
        config: ProxyConfig | None = None,
        on_event: OnEvent | None = None,
        stats: ProxyStats | None = None,
    ) -> None:
        self.listeners = listeners
        self.config = config or ProxyConfig()
        self.stats = stats or ProxyStats()
        self._decide = decide
        self._on_answer = on_answer
        self._on_event = on_event
        self._ports = {sock.getsockname()[1] for sock in listeners.udp + listeners.tcp}
        self._raw: dict[int, RawReplySocket] = {}
        self._sender = SendThread() if self.config.send_thread else None
        self._upstream: dict[int, UdpUpstream] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_at = 0.0  # unix time the proxy started reading (see start)
        self._max_queue: dict[int, int] = {}  # listener fd → backlog bytes beyond which batches are shed
        self._flush_scheduled = False

    async def __aenter__(self) -> DNSProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        return self.listeners.port

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        # Queries that queued before this proxy started (while no agent ran: kept sockets across a
        # restart) are served, not shed as late: keeping them is what the socket keeper is for.
        self._started_at = time.time()
        try:
            for sock in self.listeners.udp:
                family = sock.family
                if family not in self._raw:
                    self._raw[family] = RawReplySocket(family, self._sender)
                    self._upstream[family] = UdpUpstream(
                        family,
                        self._udp_answered,
                        self._udp_expired,
                        pool_size=self.config.upstream_sockets,
                        uses_per_socket=self.config.uses_per_socket,
                        mark=self.config.mark,
                        on_error=self._udp_unsent,
                        sender=self._sender,
                    )
                if self.config.max_queue_delay is not None:
                    stamp_arrivals(sock)
                limit = receive_buffer(sock, self.config.receive_buffer) // 2
                if self.config.max_queue_bytes is not None:
                    self._max_queue[sock.fileno()] = min(self.config.max_queue_bytes, limit)
                loop.add_reader(sock.fileno(), self._udp_readable, sock, int(family))
            for sock in self.listeners.tcp:
                self._servers.append(await asyncio.start_server(self._tcp_connection, sock=sock))
        except BaseException:
            await self.aclose()
            raise

    async def drain(self, timeout: float) -> int:
        """Stop taking new queries (they stay queued in the listening sockets for whoever serves them
        next) and wait up to ``timeout`` seconds for the queries in flight to be answered. Returns how
        many were still in flight."""
        loop = self._loop
        if loop is None:
            return 0
        for sock in self.listeners.udp:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
        for server in self._servers:
            server.close()  # no new TCP connections; open ones finish their queries
        deadline = loop.time() + timeout
        while self.stats.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self.stats.in_flight

    async def aclose(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._loop = None
        for sock in self.listeners.udp:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        for upstream in self._upstream.values():
            upstream.flush()
        self._flush_replies()
        if self._sender is not None:
            self._sender.close()  # sends what it was handed, before the sockets close
        for upstream in self._upstream.values():
            upstream.close()
        for raw in self._raw.values():
            raw.close()
        self._servers.clear()
        self._upstream.clear()
        self._raw.clear()
        self.listeners.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- shared by UDP and TCP ----------------------------------------------------------------------

    def _finish(
        self,
        query: wire.Query | None,
        protocol: Protocol_,
        client: tuple[Any, ...],
        server: tuple[str, int],
        *,
        rcode: int,
        ips: tuple[tuple[str, int], ...],
        verdict: str,
    ) -> None:
        self.stats.queries[(verdict, wire.rcode_name(rcode) if rcode >= 0 else "dropped")] += 1
        if self._on_event is not None:
            self._on_event(
                QueryEvent(
                    client[0],
                    client[1],
                    server[0],
                    server[1],
                    protocol,
                    query.qname if query else "",
                    query.qtype if query else 0,
                    rcode,
                    ips,
                    verdict,
                )
            )

    def _admit(
        self,
        data: bytes,
        protocol: Protocol_,
        client: tuple[Any, ...],
        server: tuple[str, int],
        late: bool = False,
    ) -> tuple[wire.Query, str] | _Immediate:
        """Parse and decide: the query to forward with the verdict it will be logged with (``allowed``
        or ``audit``), or what to answer right away. ``late``: it waited too long to be read."""
        try:
            query = wire.parse_query(data)
        except MalformedMessage:
            reply = wire.header_reply(data, wire.FORMERR)
            rcode = wire.FORMERR if reply else -1
            self._finish(None, protocol, client, server, rcode=rcode, ips=_NO_IPS, verdict="malformed")
            return _Immediate(reply)
        flags = query.flags
        if flags & wire.QR:
            self._finish(query, protocol, client, server, rcode=-1, ips=_NO_IPS, verdict="malformed")
            return _Immediate(None)
        if flags & wire.OPCODE_MASK or query.qclass != wire.CLASS_IN or server[1] in self._ports:
            return self._refuse(query, protocol, client, server, rcode=wire.REFUSED, verdict="unsupported")
        if late or self.stats.in_flight >= self.config.max_in_flight:
            self.stats.overload_refusals += 1
            return self._refuse(query, protocol, client, server, rcode=wire.REFUSED, verdict="overload")
        verdict = self._decide(client[0], server[0], server[1], protocol, query.qname, query.qtype)
        if type(verdict) is not Allowed:
            return self._refuse(
                query, protocol, client, server, rcode=self.config.refuse_rcode, verdict="refused"
            )
        return query, "audit" if verdict.audit else "allowed"

    def _refuse(
        self,
        query: wire.Query,
        protocol: Protocol_,
        client: tuple[Any, ...],
        server: tuple[str, int],
        *,
        rcode: int,
        verdict: str,
    ) -> _Immediate:
        self._finish(query, protocol, client, server, rcode=rcode, ips=_NO_IPS, verdict=verdict)
        return _Immediate(wire.error_reply(query.id, query.flags, query.question, rcode))

    def _ips(self, query: wire.Query, answer: bytes) -> tuple[tuple[str, int], ...]:
        if answer[3] & 0x0F != wire.NOERROR:
            return _NO_IPS
        return answer_ips(answer, query.qname, len(query.question))

    # -- UDP: reader callbacks, no task per query ---------------------------------------------------

    def _udp_readable(self, sock: socket.socket, family: int) -> None:
        recvmsg = sock.recvmsg
        max_delay = self.config.max_queue_delay
        max_bytes = self._max_queue.get(sock.fileno())
        now = time.time()
        behind = (
            max_bytes is not None
            and now > self._started_at + self.config.timeout
            and queued_bytes(sock) > max_bytes
        )
        for _ in range(BATCH):
            try:
                data, ancillary, flags, client = recvmsg(RECEIVE_SIZE, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("receiving a query failed: %s", exc)
                return
            origin = original_destination(ancillary)
            if origin is None or flags & socket.MSG_TRUNC:
                self.stats.queries[("malformed", "dropped")] += 1
                continue
            late = behind or (
                max_delay is not None and self._started_at < arrival(ancillary) < time.time() - max_delay
            )
            self._udp_query(family, data, client, origin, late)

    def _udp_query(
        self, family: int, data: bytes, client: tuple[Any, ...], origin: tuple[bytes, int], late: bool = False
    ) -> None:
        server = (socket.inet_ntop(family, origin[0]), origin[1])
        admitted = self._admit(data, "udp", client, server, late)
        if isinstance(admitted, _Immediate):
            if admitted.reply is not None:
                self._udp_send(family, admitted.reply, origin, client)
            return
        query, allowed = admitted
        assert self._loop is not None
        address = server if family == socket.AF_INET else (server[0], server[1], 0, 0)
        pending = Pending(
            address,
            query.question,
            self._loop.time() + self.config.timeout,
            (family, client, origin, query, server, allowed),
        )
        self.stats.in_flight += 1
        try:
            self._upstream[family].send(pending, data)
        except UpstreamError as exc:
            log.debug("%s", exc)
            self._udp_fail(pending, "servfail")

    def _udp_send(
        self, family: int, reply: bytes, origin: tuple[bytes, int], client: tuple[Any, ...]
    ) -> None:
        """Queue a reply; the replies queued while the loop runs its ready callbacks leave together
        (one ``sendmmsg`` per family, see :meth:`_flush_replies`)."""
        try:
            self._raw[family].queue(reply, origin, client)
        except OSError as exc:
            log.warning("cannot send a reply to %s: %s", client[0], exc)
            return
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_replies)

    def _flush_replies(self) -> None:
        self._flush_scheduled = False
        for raw in self._raw.values():
            raw.flush()

    def _udp_answered(self, pending: Pending, answer: bytes) -> None:
        assert self._loop is not None
        self.stats.observe_latency(self._loop.time() - pending.sent_at)
        query: wire.Query = pending.context[3]
        try:
            ips = self._ips(query, answer)
        except MalformedMessage:
            self._udp_fail(pending, "servfail")
            return
        if ips:
            try:
                waiting = self._on_answer(pending.context[1][0], query.qname, ips)
            except Exception:  # the hook's failure must become SERVFAIL, whatever it is
                log.exception("on_answer failed for %s", query.qname)
                self._udp_fail(pending, "servfail")
                return
            if waiting is not None:
                self._spawn(self._udp_answer_after(waiting, pending, answer, ips))
                return
        self._udp_release(pending, answer, ips)

    async def _udp_answer_after(
        self, waiting: Awaitable[None], pending: Pending, answer: bytes, ips: tuple[tuple[str, int], ...]
    ) -> None:
        try:
            async with asyncio.timeout_at(pending.deadline):
                await waiting
        except TimeoutError:
            self._udp_fail(pending, "timeout")
        except Exception:  # the hook's failure must become SERVFAIL, whatever it is
            log.exception("on_answer failed for %s", pending.context[3].qname)
            self._udp_fail(pending, "servfail")
        else:
            self._udp_release(pending, answer, ips)

    def _udp_release(self, pending: Pending, answer: bytes, ips: tuple[tuple[str, int], ...]) -> None:
        family, client, origin, query, server, allowed = pending.context
        self.stats.in_flight -= 1
        self._udp_send(family, query.id.to_bytes(2, "big") + answer[2:], origin, client)
        self._finish(query, "udp", client, server, rcode=answer[3] & 0x0F, ips=ips, verdict=allowed)

    def _udp_expired(self, pending: Pending) -> None:
        self._udp_fail(pending, "timeout")

    def _udp_unsent(self, pending: Pending) -> None:
        self._udp_fail(pending, "servfail")

    def _udp_fail(self, pending: Pending, verdict: str) -> None:
        family, client, origin, query, server, _ = pending.context
        self.stats.in_flight -= 1
        reply = wire.error_reply(query.id, query.flags, query.question, wire.SERVFAIL)
        self._udp_send(family, reply, origin, client)
        self._finish(query, "udp", client, server, rcode=wire.SERVFAIL, ips=_NO_IPS, verdict=verdict)

    # -- TCP: a task per connection, a task per query ------------------------------------------------

    async def _tcp_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        server: tuple[Any, ...] = sock.getsockname()
        client: tuple[Any, ...] = writer.get_extra_info("peername")
        queries: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.config.tcp_idle_timeout):
                        # Backpressure: no next query while the client leaves its replies unread
                        # (above the transport's high-water mark); such a client is idle.
                        await writer.drain()
                        length = int.from_bytes(await reader.readexactly(2), "big")
                        message = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                task = asyncio.create_task(self._tcp_query(sock.family, message, client, server, writer))
                queries.add(task)
                task.add_done_callback(queries.discard)
            if queries:
                await asyncio.gather(*queries)
        finally:
            for task in queries:
                task.cancel()
            writer.close()

    async def _tcp_query(
        self,
        family: int,
        message: bytes,
        client: tuple[Any, ...],
        address: tuple[Any, ...],
        writer: asyncio.StreamWriter,
    ) -> None:
        server = (str(address[0]), int(address[1]))
        admitted = self._admit(message, "tcp", client, server)
        if isinstance(admitted, _Immediate):
            if admitted.reply is not None:
                self._tcp_write(writer, admitted.reply)
            return
        query, allowed = admitted
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout
        self.stats.in_flight += 1
        try:
            started = loop.time()
            answer = await tcp_exchange(
                family, address, message, query.question, deadline, mark=self.config.mark
            )
            self.stats.observe_latency(loop.time() - started)
            ips = self._ips(query, answer)
            if ips:
                waiting = self._on_answer(client[0], query.qname, ips)
                if waiting is not None:
                    async with asyncio.timeout_at(deadline):
                        await waiting
        except (UpstreamTimeout, TimeoutError):
            reply, rcode, ips, verdict = None, wire.SERVFAIL, _NO_IPS, "timeout"
        except (UpstreamError, MalformedMessage) as exc:
            log.debug("%s", exc)
            reply, rcode, ips, verdict = None, wire.SERVFAIL, _NO_IPS, "servfail"
        except Exception:  # the hook's failure must become SERVFAIL, whatever it is
            log.exception("on_answer failed for %s", query.qname)
            reply, rcode, ips, verdict = None, wire.SERVFAIL, _NO_IPS, "servfail"
        else:
            reply, rcode, verdict = query.id.to_bytes(2, "big") + answer[2:], answer[3] & 0x0F, allowed
        finally:
            self.stats.in_flight -= 1
        if reply is None:
            reply = wire.error_reply(query.id, query.flags, query.question, wire.SERVFAIL)
        self._tcp_write(writer, reply)
        self._finish(query, "tcp", client, server, rcode=rcode, ips=ips, verdict=verdict)

    @staticmethod
    def _tcp_write(writer: asyncio.StreamWriter, reply: bytes) -> None:
        if not writer.is_closing():
            writer.write(len(reply).to_bytes(2, "big") + reply)
