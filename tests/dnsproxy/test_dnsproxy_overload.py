"""Overload: beyond capacity the excess gets a fast REFUSED (verdict ``overload``, counted), the queries
in flight stay bounded, and the proxy serves normally again as soon as the load drops. Bounded form of
the 60-second overload leg of ``tests/bench/dns_product.py``. Needs root (a private namespace)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import dnslib
import pytest
from dnsproxy_harness import NameServer, query, udp_ask
from test_dnsproxy_contract import ALLOW, Recorder, a_record, nothing, parsed, run

from dnsproxy import DNSProxy, ProxyConfig

pytestmark = pytest.mark.root

QUEUED = 20
STALL = 0.4  # how long the proxy's loop is kept busy (the overload itself, not synchronisation)


def test_queries_that_waited_too_long_are_refused_fast_and_the_proxy_recovers() -> None:
    """The loop is stalled (a slow decision) while queries queue in the listening socket: once read,
    those older than ``max_queue_delay`` get REFUSED without going upstream; the next query is served."""
    stalling = threading.Event()

    def decide(*args: Any) -> Any:
        if args[4] == "stall.allowed.test":
            stalling.set()
            time.sleep(STALL)  # a busy proxy: queries keep arriving meanwhile
        return ALLOW(*args)

    def flood(sock: socket.socket, target: tuple[str, int]) -> list[int]:
        assert stalling.wait(10)
        for i in range(QUEUED):
            sock.sendto(query(f"q{i}.allowed.test", ident=i).pack(), target)
        rcodes = []
        sock.settimeout(5)
        for _ in range(QUEUED):
            rcodes.append(dnslib.DNSRecord.parse(sock.recv(4096)).header.rcode)
        return rcodes

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        target = ("127.0.0.1", server.port)
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.2", 0))  # made here: inside the test's namespace
            flooded = loop.run_in_executor(None, flood, sock, target)
            stalled = parsed(await udp_ask(query("stall.allowed.test").pack(), target))
            rcodes = await flooded
        assert stalled.header.rcode == dnslib.RCODE.NOERROR
        assert rcodes == [dnslib.RCODE.REFUSED] * QUEUED
        assert proxy.stats.overload_refusals == QUEUED
        assert [e.verdict for e in rec.events].count("overload") == QUEUED
        assert not any(str(q.q.qname).startswith("q") for q in server.seen)  # nothing went upstream
        after = parsed(await udp_ask(query("after.allowed.test").pack(), target))
        assert after.header.rcode == dnslib.RCODE.NOERROR and len(after.rr) == 1

    run(body, a_record, config=ProxyConfig(max_queue_delay=0.1), decide=decide)


def test_in_flight_table_is_bounded_and_the_excess_refused() -> None:
    """An upstream that never answers: at most ``max_in_flight`` queries wait (then SERVFAIL at the
    deadline), every other query is REFUSED at once; afterwards the table is empty again."""
    limit, sent = 4, 40

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        target = ("127.0.0.1", server.port)
        started = time.monotonic()
        replies = await asyncio.gather(
            *(udp_ask(query(f"n{i}.allowed.test").pack(), target) for i in range(sent))
        )
        rcodes = [parsed(r).header.rcode for r in replies]
        assert rcodes.count(dnslib.RCODE.SERVFAIL) == limit
        assert rcodes.count(dnslib.RCODE.REFUSED) == sent - limit
        assert proxy.stats.overload_refusals == sent - limit
        assert len(server.seen) == limit
        assert proxy.stats.in_flight == 0
        assert time.monotonic() - started < 5
        # the load is gone: the limit does not linger (the upstream is still silent: SERVFAIL, not REFUSED)
        again = parsed(await udp_ask(query("later.allowed.test").pack(), target))
        assert again.header.rcode == dnslib.RCODE.SERVFAIL

    run(body, nothing, config=ProxyConfig(max_in_flight=limit, timeout=0.5))


async def _burst(count: int, target: tuple[str, int], prefix: str, hold: float) -> list[int]:
    """``count`` queries sent while the proxy's loop (this test's loop) is held for ``hold`` seconds:
    the proxy cannot read meanwhile, so they all wait in its listening socket. Their rcodes."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))
        sock.setblocking(False)
        for i in range(count):
            sock.sendto(query(f"{prefix}{i}.allowed.test", ident=i).pack(), target)
        time.sleep(hold)  # the stall itself (a busy proxy), not synchronisation
        rcodes = []
        async with asyncio.timeout(5):
            for _ in range(count):
                rcodes.append(dnslib.DNSRecord.parse(await loop.sock_recv(sock, 4096)).header.rcode)
        return rcodes


def test_a_backlog_below_the_limit_is_served_and_above_it_refused() -> None:
    """The backlog rule: while more than ``max_queue_bytes`` wait in the listening socket, the batch
    read gets a fast REFUSED; a backlog below the limit is served in full (no refusal below
    capacity). The listening socket's receive buffer is raised so the kernel keeps the backlog."""

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        target = ("127.0.0.1", server.port)
        sock = proxy.listeners.udp[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * ProxyConfig().receive_buffer
        # held past ``timeout`` (0.2 s): the first seconds after start are exempt (a kept backlog)
        assert await _burst(3, target, "below", 0.3) == [dnslib.RCODE.NOERROR] * 3
        assert proxy.stats.overload_refusals == 0
        assert await _burst(QUEUED, target, "above", 0.05) == [dnslib.RCODE.REFUSED] * QUEUED
        assert proxy.stats.overload_refusals == QUEUED
        assert not any(str(q.q.qname).startswith("above") for q in server.seen)  # nothing went upstream
        after = parsed(await udp_ask(query("after.allowed.test").pack(), target))
        assert after.header.rcode == dnslib.RCODE.NOERROR

    config = ProxyConfig(max_queue_bytes=8 * 1024, max_queue_delay=None, timeout=0.2)  # ~10 queries
    run(body, a_record, config=config)
