"""The reply contract, end to end over real sockets: a client on 127.0.0.2 asks an in-process name server
on 127.0.0.1 (port 0); nft tproxy hands the query to the proxy, which learns the server from the original
destination, and the reply comes back from the server's address through the raw socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dnslib
import pytest
from dnsproxy_harness import (
    CLIENT,
    PROXY_PORT,
    NameServer,
    answer,
    loopback_lab,
    query,
    run_in_netns,
    tcp_ask,
    udp_ask,
)

from dnsproxy import (
    ALLOWED,
    REFUSED,
    DNSProxy,
    Listeners,
    ProxyConfig,
    QueryEvent,
    allow_names,
    wire,
)
from l7.policy import fqdn

pytestmark = pytest.mark.root

ALLOW = allow_names([fqdn.match_pattern("*.allowed.test"), fqdn.match_name("allowed.test")])


async def a_record(request: dnslib.DNSRecord) -> list[bytes]:
    name = str(request.q.qname)
    return [answer(request, f"{name} 60 A 10.215.1.1")]


async def nothing(request: dnslib.DNSRecord) -> list[bytes]:
    return []


class Recorder:
    def __init__(self) -> None:
        self.answers: list[tuple[str, str, tuple[tuple[str, int], ...]]] = []
        self.events: list[QueryEvent] = []

    def on_answer(self, source: str, qname: str, ips: tuple[tuple[str, int], ...]) -> None:
        self.answers.append((source, qname, ips))


Body = Callable[[NameServer, DNSProxy, Recorder], Awaitable[Any]]


def run(
    body: Body,
    behaviour: Callable[[dnslib.DNSRecord], Awaitable[list[bytes]]] = a_record,
    *,
    config: ProxyConfig | None = None,
    decide: Any = ALLOW,
    on_answer: Any = None,
) -> Any:
    async def main() -> Any:
        server = await NameServer(behaviour).start()
        recorder = Recorder()
        proxy = DNSProxy(
            Listeners.create(PROXY_PORT, ipv6=False),
            decide,
            on_answer or recorder.on_answer,
            config=config,
            on_event=recorder.events.append,
        )
        try:
            async with proxy:
                return await body(server, proxy, recorder)
        finally:
            server.close()

    with loopback_lab() as name:
        return run_in_netns(name, main)


def parsed(reply: tuple[bytes, tuple[str, int]] | None) -> dnslib.DNSRecord:
    assert reply is not None, "no reply"
    return dnslib.DNSRecord.parse(reply[0])


def test_allowed_query_is_answered_from_the_server_asked() -> None:
    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        q = query("WwW.Allowed.TEST", ident=4242)
        got = await udp_ask(q.pack(), ("127.0.0.1", server.port))
        assert got is not None
        assert got[1] == ("127.0.0.1", server.port)  # from the server the client asked
        reply = dnslib.DNSRecord.parse(got[0])
        assert reply.header.id == 4242 and reply.header.rcode == 0
        assert [str(rr.rdata) for rr in reply.rr] == ["10.215.1.1"]
        assert str(reply.q.qname) == "WwW.Allowed.TEST."  # 0x20 case preserved
        # the upstream was asked by the proxy, not by the client
        assert server.seen_from[0][0] == "127.0.0.1"
        assert rec.answers == [(CLIENT, "www.allowed.test", (("10.215.1.1", 60),))]
        assert rec.events[-1].verdict == "allowed" and rec.events[-1].rcode == 0
        assert rec.events[-1].server_port == server.port
        assert proxy.stats.queries[("allowed", "NOERROR")] == 1

    run(body)


def test_refused_name_gets_refused_and_nothing_goes_upstream() -> None:
    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        q = query("evil.test", "AAAA", ident=777)
        q.header.rd = 1
        reply = parsed(await udp_ask(q.pack(), ("127.0.0.1", server.port)))
        assert reply.header.rcode == dnslib.RCODE.REFUSED
        assert reply.header.id == 777 and reply.header.rd == 1 and reply.header.qr == 1
        assert reply.questions == q.questions
        assert server.seen == []
        assert rec.events[-1].verdict == "refused"

    run(body)


def test_nxdomain_option() -> None:
    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        reply = parsed(await udp_ask(query("evil.test").pack(), ("127.0.0.1", server.port)))
        assert reply.header.rcode == dnslib.RCODE.NXDOMAIN
        assert server.seen == []

    run(body, config=ProxyConfig(refuse_rcode=wire.NXDOMAIN))


def test_upstream_timeout_is_servfail_within_the_deadline() -> None:
    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        started = time.monotonic()
        reply = parsed(await udp_ask(query("slow.allowed.test").pack(), ("127.0.0.1", server.port)))
        elapsed = time.monotonic() - started
        assert reply.header.rcode == dnslib.RCODE.SERVFAIL
        assert 0.3 <= elapsed < 0.3 + 0.15
        tcp = dnslib.DNSRecord.parse(
            (await tcp_ask([query("slow.allowed.test").pack()], ("127.0.0.1", server.port)))[0]
        )
        assert tcp.header.rcode == dnslib.RCODE.SERVFAIL
        assert [e.verdict for e in rec.events] == ["timeout", "timeout"]

    run(body, nothing, config=ProxyConfig(timeout=0.3))


def test_malformed_queries() -> None:
    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        target = ("127.0.0.1", server.port)
        two = query("a.allowed.test", ident=99)
        two.add_question(dnslib.DNSQuestion("b.allowed.test"))
        reply = parsed(await udp_ask(two.pack(), target))
        assert reply.header.rcode == dnslib.RCODE.FORMERR and reply.header.id == 99
        garbage = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"
        reply = parsed(await udp_ask(garbage, target))
        assert reply.header.rcode == dnslib.RCODE.FORMERR and reply.header.id == 0x1234
        assert await udp_ask(b"\x01\x02\x03", target, timeout=0.3) is None  # too short to echo: dropped
        assert server.seen == []
        assert proxy.stats.queries[("malformed", "FORMERR")] == 2

    run(body)


def test_answers_with_wrong_id_or_from_wrong_source_are_ignored() -> None:
    async def tricky(request: dnslib.DNSRecord) -> list[bytes]:
        wrong = request.reply()
        wrong.header.id = (request.header.id + 1) % 65536
        wrong.add_answer(*dnslib.RR.fromZone(f"{request.q.qname} 60 A 10.215.6.6"))
        other_question = dnslib.DNSRecord.question("other.test").reply()
        other_question.header.id = request.header.id
        other_question.add_answer(*dnslib.RR.fromZone("other.test 60 A 10.215.6.7"))
        return [wrong.pack(), other_question.pack(), answer(request, f"{request.q.qname} 60 A 10.215.1.1")]

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        reply = parsed(await udp_ask(query("x.allowed.test").pack(), ("127.0.0.1", server.port)))
        assert [str(rr.rdata) for rr in reply.rr] == ["10.215.1.1"]
        assert rec.answers[-1][2] == (("10.215.1.1", 60),)

    run(body, tricky)


def test_answer_from_another_port_is_ignored() -> None:
    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        async def spoofing(request: dnslib.DNSRecord) -> list[bytes]:
            server.spoof_from = [answer(request, f"{request.q.qname} 60 A 10.215.6.6")]
            return [answer(request, f"{request.q.qname} 60 A 10.215.1.1")]

        server.behaviour = spoofing
        reply = parsed(await udp_ask(query("y.allowed.test").pack(), ("127.0.0.1", server.port)))
        # the spoofed answer never counts: the upstream socket is connected to the server, so the
        # kernel drops datagrams from any other port (an unconnected socket's are ignored and counted)
        assert [str(rr.rdata) for rr in reply.rr] == ["10.215.1.1"]

    run(body)


def test_with_the_send_thread_a_burst_is_answered_in_full() -> None:
    """Batches of queries and replies handed to the send thread: every query of a burst gets its own
    answer (ID and name), the upstream saw each once."""
    count = 40

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        target = ("127.0.0.1", server.port)
        names = [f"burst{i}.allowed.test" for i in range(count)]
        replies = await asyncio.gather(
            *(udp_ask(query(n, ident=i).pack(), target) for i, n in enumerate(names))
        )
        for i, (name, reply) in enumerate(zip(names, replies, strict=True)):
            got = parsed(reply)
            assert got.header.id == i and str(got.q.qname) == name + "."
            assert got.header.rcode == dnslib.RCODE.NOERROR and len(got.rr) == 1
        assert sorted(str(q.q.qname) for q in server.seen) == sorted(n + "." for n in names)

    run(body, config=ProxyConfig(send_thread=True))


def test_overload_is_refused_and_counted() -> None:
    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        target = ("127.0.0.1", server.port)
        first = asyncio.create_task(udp_ask(query("one.allowed.test").pack(), target))
        while not server.seen:  # the first query is in flight
            await asyncio.sleep(0.01)
        reply = parsed(await udp_ask(query("two.allowed.test").pack(), target))
        assert reply.header.rcode == dnslib.RCODE.REFUSED
        assert proxy.stats.overload_refusals == 1
        assert parsed(await first).header.rcode == dnslib.RCODE.SERVFAIL

    run(body, nothing, config=ProxyConfig(max_in_flight=1, timeout=1.0))


def test_reply_is_released_only_after_on_answer_completes() -> None:
    order: list[str] = []

    async def slow_ipcache_write(source: str, qname: str, ips: tuple[tuple[str, int], ...]) -> None:
        order.append("hook started")
        await asyncio.sleep(0.1)  # a slow datapath write, not synchronisation
        order.append("hook done")

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        for ask in (udp_ask, tcp_ask):
            order.clear()
            message = query("z.allowed.test").pack()
            if ask is udp_ask:
                await udp_ask(message, ("127.0.0.1", server.port))
            else:
                await tcp_ask([message], ("127.0.0.1", server.port))
            order.append("reply")
            assert order == ["hook started", "hook done", "reply"]

    run(body, on_answer=slow_ipcache_write)


def test_on_answer_missing_the_deadline_is_servfail() -> None:
    async def stuck(source: str, qname: str, ips: tuple[tuple[str, int], ...]) -> None:
        await asyncio.Event().wait()

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        reply = parsed(await udp_ask(query("s.allowed.test").pack(), ("127.0.0.1", server.port)))
        assert reply.header.rcode == dnslib.RCODE.SERVFAIL

    run(body, on_answer=stuck, config=ProxyConfig(timeout=0.3))


def test_failing_on_answer_fails_closed() -> None:
    def broken(source: str, qname: str, ips: tuple[tuple[str, int], ...]) -> None:
        raise RuntimeError("ipcache full")

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        target = ("127.0.0.1", server.port)
        reply = parsed(await udp_ask(query("q.allowed.test").pack(), target))
        assert reply.header.rcode == dnslib.RCODE.SERVFAIL
        tcp = dnslib.DNSRecord.parse((await tcp_ask([query("q.allowed.test").pack()], target))[0])
        assert tcp.header.rcode == dnslib.RCODE.SERVFAIL

    run(body, on_answer=broken)


def test_tcp_several_queries_per_connection() -> None:
    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        messages = [
            query("a.allowed.test", ident=1).pack(),
            query("evil.test", ident=2).pack(),
            query("b.allowed.test", "A", ident=3).pack(),
        ]
        replies = [dnslib.DNSRecord.parse(r) for r in await tcp_ask(messages, ("127.0.0.1", server.port))]
        by_id = {r.header.id: r for r in replies}
        assert sorted(by_id) == [1, 2, 3]
        assert by_id[2].header.rcode == dnslib.RCODE.REFUSED
        assert [str(rr.rdata) for rr in by_id[1].rr] == ["10.215.1.1"]
        assert [str(rr.rdata) for rr in by_id[3].rr] == ["10.215.1.1"]
        assert {e.protocol for e in rec.events} == {"tcp"}
        assert sorted(a[1] for a in rec.answers) == ["a.allowed.test", "b.allowed.test"]

    run(body)


def test_decide_gets_the_original_destination() -> None:
    calls: list[tuple[Any, ...]] = []

    def decide(*args: Any) -> Any:
        calls.append(args)
        return ALLOWED if args[4] == "ok.test" else REFUSED

    async def body(server: NameServer, proxy: DNSProxy, rec: Recorder) -> None:
        await udp_ask(query("OK.test.", "AAAA").pack(), ("127.0.0.1", server.port))
        assert calls == [(CLIENT, "127.0.0.1", server.port, "udp", "ok.test", 28)]

    run(body, decide=decide)
