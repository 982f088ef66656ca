"""DNS fuzzing (issue 11, "Fuzzing: DNS"): the proxy's parsing and decision path and a running proxy.

Every test checks the reply contract of ``dnsproxy/proxy.py`` against an oracle written here from the
RFCs, not from ``dnsproxy/wire.py``:

- shorter than a header, or a response (QR set) → no reply;
- not exactly one question, a name that is compressed, has a label type other than 0–63, is longer
  than 255 octets or runs past the end, or no type and class → FORMERR echoing ID, opcode and RD,
  QR set, no question;
- opcode other than QUERY or class other than IN → REFUSED with the question echoed;
- a name the policy does not allow → REFUSED with the question echoed, nothing sent upstream;
- an allowed name → forwarded; the client gets the server's answer with its own ID back, or SERVFAIL.

The policy: ``matchName: allowed.test``, ``matchPattern: *.allowed.test``, ``matchPattern: **.deep.test``.
Whether a name is allowed is decided here on the *wire labels* (a label ``a.allowed`` is one label with
a dot in it, never two), which is what the attacks below try to confuse.

Attacks covered by the generated messages, with precedents (public advisories and bug reports):

- compression pointers in the question, pointer loops, pointers past the end — the classic resolver
  crash/DoS class: RFC 9267 (Forescout, "Common Implementation Anti-Patterns Related to DNS RR
  Processing", §2 pointer and offset validation), nginx's resolver commit "explicit check for
  compression pointers in question", haproxy "BUG/MEDIUM: resolvers: fix name compression pointer
  validation in resolv_read_name()", FreeBSD VuXML eed1a411-699b-11f0 (resolv: unbounded decompressed
  name length); for l7gate a loop must give FORMERR or SERVFAIL, never a hang;
- labels containing dots or NUL, names that print like an allowed name (RFC 9267 §3 and §4: label
  length and NUL-terminator validation) — the oracle checks that only names whose *wire labels* end in
  ``allowed``/``test`` are ever forwarded (a label ``a.allowed`` is one label, never two);
- 0x20 mixed case — envoyproxy/envoy#45381 "dns filter: allow case insensitive match for virtual
  domains", haproxy/haproxy#566 "DNS Resolver and different case in response answer section": allowed
  in any case, and the question is echoed exactly as asked;
- over-long labels and names, zero or several questions, bad EDNS OPT records, truncated headers
  (RFC 9267 §3, §5, §6: length and count validation);
- TCP length prefixes that lie (shorter, longer, zero), several queries in one stream.

Run long: ``L7GATE_FUZZ_EXAMPLES=1000000 .venv/bin/pytest tests/security/test_fuzz_dns.py -k pure``
(the ``pure`` tests run ~2,000 examples/s on one core; the end-to-end ones ~200/s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dnslib
import pytest
from fuzz_settings import fuzz_settings
from hypothesis import event, example, given
from hypothesis import strategies as st

from dnsproxy import DNSProxy, Listeners, MalformedMessage, ProxyConfig, allow_names, wire
from dnsproxy.answers import MAX_CHAIN, answer_ips
from dnsproxy.proxy import _Immediate
from l7.policy import fqdn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dnsproxy"))
from dnsproxy_harness import CLIENT, CLONE_NEWNET, PROXY_PORT, _libc, loopback_lab

T = TypeVar("T")

POLICY = allow_names(
    [
        fqdn.match_name("allowed.test"),
        fqdn.match_pattern("*.allowed.test"),
        fqdn.match_pattern("**.deep.test"),
    ]
)
PLAIN = frozenset(b"-_0123456789abcdefghijklmnopqrstuvwxyz")
UPSTREAM_IP = "10.215.0.1"
UPSTREAM_TTL = 60

# -- the oracle ------------------------------------------------------------------------------------


def allowed_by_policy(labels: list[bytes]) -> bool:
    """The policy above, on wire labels."""
    low = [label.lower() for label in labels]

    def plain(label: bytes) -> bool:
        return all(b in PLAIN for b in label)

    if low == [b"allowed", b"test"]:
        return True
    if len(low) == 3 and low[1:] == [b"allowed", b"test"] and plain(low[0]):
        return True
    return len(low) >= 3 and low[-2:] == [b"deep", b"test"] and all(plain(label) for label in low[:-2])


@dataclass(frozen=True)
class Expect:
    kind: str
    """``drop``, ``formerr``, ``refused``, ``forward``."""
    ident: int = 0
    flags: int = 0
    question: bytes = b""
    labels: tuple[bytes, ...] = ()


def oracle(message: bytes) -> Expect:
    if len(message) < 12 or message[2] & 0x80:
        return Expect("drop")
    ident, flags, qdcount = struct.unpack_from("!HHH", message)
    formerr = Expect("formerr", ident, flags)
    if qdcount != 1:
        return formerr
    pos, labels = 12, []
    while True:
        if pos >= len(message):
            return formerr
        length = message[pos]
        if length == 0:
            pos += 1
            break
        if length > 63 or pos + 1 + length > len(message):
            return formerr
        labels.append(message[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if pos - 12 > 255 or pos + 4 > len(message):
        return formerr
    question = message[12 : pos + 4]
    qclass = struct.unpack_from("!H", message, pos + 2)[0]
    opcode = (flags >> 11) & 0xF
    if opcode or qclass != 1 or not allowed_by_policy(labels):
        return Expect("refused", ident, flags, question, tuple(labels))
    return Expect("forward", ident, flags, question, tuple(labels))


def check_proxy_reply(reply: bytes, expect: Expect) -> None:
    """A reply the proxy made itself: FORMERR, REFUSED or SERVFAIL (exact bytes, and dnslib agrees)."""
    rcode = {"formerr": wire.FORMERR, "refused": wire.REFUSED, "servfail": wire.SERVFAIL}[expect.kind]
    flags = 0x8000 | (expect.flags & 0x7900) | 0x0080 | rcode  # QR, opcode and RD kept, RA, rcode
    question = b"" if expect.kind == "formerr" else expect.question
    assert reply == struct.pack("!HHHHHH", expect.ident, flags, 1 if question else 0, 0, 0, 0) + question
    header = dnslib.DNSHeader.parse(dnslib.DNSBuffer(reply))  # the reference peer reads it
    assert header.id == expect.ident and header.qr == 1 and header.rcode == rcode


def upstream_answer(query: wire.Query) -> bytes:
    """What the fake upstream answers to an allowed query (also the oracle for the forwarded reply)."""
    header = struct.pack("!HHHHHH", query.id, 0x8000 | (query.flags & 0x0100) | 0x0080, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", wire.TYPE_A, wire.CLASS_IN, UPSTREAM_TTL, 4)
    return header + query.question + record + socket.inet_aton(UPSTREAM_IP)


# -- message strategies ------------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
LABEL = st.one_of(
    st.text(alphabet=LETTERS, min_size=1, max_size=12).map(str.encode),  # 0x20: any case
    st.binary(min_size=1, max_size=12),  # dots, NUL, high bytes, spaces, backslashes
    st.sampled_from(
        [
            b"allowed",
            b"ALLOWED",
            b"Test",
            b"deep",
            b"allowed.test",
            b"deep.test",
            b"a\x00",
            b"evil.com\x00",
            b"*",
            b"**",
            b"\\",
            b"a.allowed",
            b"x\\.allowed",
            b"\xc0",
            b"\x00",
            b"..",
        ]
    ),
    st.integers(60, 70).map(lambda n: b"L" * n),  # around the 63-octet limit
)
SUFFIX = st.sampled_from(
    [[], [b"allowed", b"test"], [b"AlLoWeD", b"TEST"], [b"deep", b"test"], [b"evil", b"test"]]
)
NAME = st.builds(
    lambda head, suffix, padding: head + [b"P" * 63] * padding + suffix,
    st.lists(LABEL, max_size=6),
    SUFFIX,
    st.sampled_from([0, 0, 0, 3, 4]),  # 4 × 63 → longer than 255
)
TERMINATOR = st.sampled_from(
    [
        b"\x00",
        b"\x00",
        b"\x00",  # a proper end
        b"\xc0\x0c",
        b"\xc0\x0d",
        b"\xc0\x00",
        b"\xc0\xff",  # pointers: to itself, into the header, ahead
        b"\xff\xff",
        b"\x40",
        b"\xc0",
        b"",  # reserved label types, a half pointer, nothing
    ]
)
QTYPE = st.one_of(st.sampled_from([1, 28, 5, 255, 16, 33, 41, 252]), st.integers(0, 65535))
QCLASS = st.one_of(st.just(1), st.just(1), st.sampled_from([3, 254, 255, 0]), st.integers(0, 65535))
FLAGS = st.one_of(
    st.just(0x0100),
    st.just(0x0000),
    st.just(0x0120),  # RD, none, RD+AD
    st.sampled_from([0x2100, 0x2800, 0x0300, 0x8180, 0x0110]),  # opcode 4 (NOTIFY), 5 (UPDATE), TC, QR, CD
    st.integers(0, 0xFFFF),
)
QDCOUNT = st.one_of(
    st.just(1), st.just(1), st.just(1), st.sampled_from([0, 2, 0xFFFF]), st.integers(0, 0xFFFF)
)
COUNT = st.one_of(st.just(0), st.just(0), st.integers(0, 0xFFFF))
OPT_VALID = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
EXTRA = st.sampled_from(
    [
        b"",
        b"",
        OPT_VALID,
        b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x10",  # OPT rdlength past the end
        b"\x01a\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",  # OPT with a non-root owner
        OPT_VALID + OPT_VALID,  # two OPT records
        b"\x00\x00\x29\xff\xff\xff\xff\xff\xff\x00\x04\x00\x08\x00\x00",  # ext-rcode, version 255, bad option
        b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01",  # an answer record *in a query*
    ]
)


FRIENDLY_NAME = st.builds(  # names the policy may allow, in any case (0x20), at any depth
    lambda head, suffix: head + suffix,
    st.lists(st.text(alphabet=LETTERS, min_size=1, max_size=10).map(str.encode), max_size=3),
    st.sampled_from([[b"allowed", b"test"], [b"aLLowed", b"tEsT"], [b"deep", b"test"], [b"DEEP", b"TEST"]]),
)


def encode_name(labels: list[bytes]) -> bytes:
    # A label of 64–70 octets keeps its length byte: the 0x40 label type, which must be FORMERR.
    return b"".join(bytes([len(label)]) + label for label in labels)


@st.composite
def structured_queries(draw: st.DrawFn, hostile_header: bool = True) -> bytes:
    """A query built field by field. ``hostile_header=False`` keeps header, terminator and class sane
    so that the name itself (dots, NUL, case, length) is what gets decided and forwarded."""
    qdcount = draw(QDCOUNT) if hostile_header else 1
    flags = draw(FLAGS) if hostile_header else draw(st.sampled_from([0x0100, 0x0000, 0x0130]))
    counts = [draw(COUNT) for _ in range(3)] if hostile_header else [0, 0, 0]
    header = struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, qdcount, *counts)
    terminator = draw(TERMINATOR) if hostile_header else b"\x00"
    qclass = draw(QCLASS) if hostile_header else 1
    name = draw(NAME) if hostile_header or draw(st.booleans()) else draw(FRIENDLY_NAME)
    body = encode_name(name) + terminator + struct.pack("!HH", draw(QTYPE), qclass)
    if qdcount > 1 and draw(st.booleans()):
        body += encode_name(draw(NAME)) + b"\x00\x00\x01\x00\x01"  # a second question
    message = header + body + draw(EXTRA)
    if not hostile_header:
        return message
    mutation = draw(st.sampled_from(["none", "none", "none", "truncate", "flip", "append"]))
    if mutation == "truncate":
        message = message[: draw(st.integers(0, len(message)))]
    elif mutation == "flip":
        at = draw(st.integers(0, len(message) - 1))
        message = message[:at] + bytes([draw(st.integers(0, 255))]) + message[at + 1 :]
    elif mutation == "append":
        message += draw(st.binary(max_size=64))
    return message


MESSAGES = st.one_of(
    structured_queries(),
    structured_queries(hostile_header=False),
    structured_queries(hostile_header=False),
    st.binary(max_size=600),
)


# -- the pure path: parse, decide, answer ------------------------------------------------------------


class DecideRecorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(  # noqa: PLR0917
        self, source_ip: str, server_ip: str, server_port: int, protocol: str, qname: str, qtype: int
    ) -> Any:
        self.calls.append(qname)
        return POLICY(source_ip, server_ip, server_port, protocol, qname, qtype)  # type: ignore[arg-type]


DECIDE = DecideRecorder()
PURE_PROXY = DNSProxy(Listeners(), DECIDE, lambda *args: None)  # never started: only its decision path


def _admit(message: bytes) -> _Immediate | tuple[wire.Query, str]:
    DECIDE.calls.clear()
    return PURE_PROXY._admit(message, "udp", ("10.0.0.2", 40000), ("10.0.0.53", 53))


@fuzz_settings(3000)
@given(MESSAGES)
def test_pure_admit_obeys_the_reply_contract(message: bytes) -> None:
    """Parse + decide on one message: the proxy's answer (or forward) is exactly what the oracle says."""
    decide = DECIDE
    started = time.perf_counter()
    outcome = _admit(message)
    assert time.perf_counter() - started < 0.25  # bounded (generous: the CI machine is shared)
    expect = oracle(message)
    event(f"oracle: {expect.kind}")
    if expect.kind == "drop":
        assert isinstance(outcome, _Immediate) and outcome.reply is None
        return
    if expect.kind == "forward":
        assert not isinstance(outcome, _Immediate), outcome.reply
        query, verdict = outcome
        assert verdict == "allowed" and query.id == expect.ident and query.question == expect.question
        assert query.qname.count(".") == len(expect.labels) - 1  # a dot inside a label never splits it
        return
    assert isinstance(outcome, _Immediate) and outcome.reply is not None
    check_proxy_reply(outcome.reply, expect)
    if expect.kind == "formerr":
        assert decide.calls == []  # a malformed message never reaches the decision


@fuzz_settings(1000)
@given(st.binary(max_size=600))
def test_pure_parse_never_raises_anything_but_malformed(message: bytes) -> None:
    try:
        query = wire.parse_query(message)
    except MalformedMessage as exc:
        assert 0 <= exc.offset <= len(message)
    else:
        assert len(query.question) >= 5 and message[12 : 12 + len(query.question)] == query.question


# Answers: the records the proxy credits to the query name (and writes to the ipcache before release).

OWNERS = ["q.allowed.test", "Q.ALLOWED.TEST", "c1.test", "c2.test", "other.test", "allowed.test", "evil.test"]
TTLS = st.one_of(st.sampled_from([0, 1, 60, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF))


@st.composite
def answer_sections(draw: st.DrawFn) -> list[tuple[str, str, str, int]]:
    """(owner, type, data, ttl): A/AAAA for any owner, CNAMEs between the names (chains, loops,
    forks, a CNAME to a name not allowed), in any order."""
    records = []
    for _ in range(draw(st.integers(0, 12))):
        owner = draw(st.sampled_from(OWNERS))
        kind = draw(st.sampled_from(["A", "A", "AAAA", "CNAME", "CNAME"]))
        if kind == "A":
            data = f"10.216.{draw(st.integers(0, 255))}.{draw(st.integers(1, 254))}"
        elif kind == "AAAA":
            data = f"fd00:216::{draw(st.integers(1, 0xFFFF)):x}"
        else:
            data = draw(st.sampled_from(OWNERS))
        records.append((owner, kind, data, draw(TTLS)))
    return records


def chain_oracle(qname: str, records: list[tuple[str, str, str, int]]) -> set[tuple[str, int]]:
    """RFC 1034 §3.6.2 / the proxy's documented semantics: follow CNAMEs from the query name (the first
    CNAME of an owner wins, at most MAX_CHAIN links, stop on a loop); credit A/AAAA on the chain with the
    lowest TTL on the path; a TTL with the top bit set counts as 0 (RFC 2181 §8)."""

    def ttl_of(ttl: int) -> int:
        return 0 if ttl > 0x7FFFFFFF else ttl

    cnames: dict[str, tuple[str, int]] = {}
    for owner, kind, data, ttl in records:
        if kind == "CNAME":
            cnames.setdefault(owner.lower(), (data.lower(), ttl_of(ttl)))
    reach = {qname: 0x7FFFFFFF}
    name = qname
    for _ in range(MAX_CHAIN):
        link = cnames.get(name)
        if link is None or link[0] in reach:
            break
        reach[link[0]] = min(reach[name], link[1])
        name = link[0]
    return {
        (data, min(ttl_of(ttl), reach[owner.lower()]))
        for owner, kind, data, ttl in records
        if kind in ("A", "AAAA") and owner.lower() in reach
    }


@fuzz_settings(1000)
@given(answer_sections(), st.sampled_from(["q.allowed.test", "Q.Allowed.Test"]))
@example(  # found by the suite: a TTL with the top bit set is 0, the two records are one
    [("q.allowed.test", "AAAA", "fd00:216::4", 0), ("q.allowed.test", "AAAA", "fd00:216::4", 2**31)],
    "q.allowed.test",
)
@example(  # found by the suite: owners differing in case only
    [
        ("q.allowed.test", "AAAA", "fd00:216::1", 0),
        ("q.allowed.test", "AAAA", "fd00:216::1", 1),
        ("q.allowed.test", "CNAME", "q.allowed.test", 0),
        ("Q.ALLOWED.TEST", "AAAA", "fd00:216::1", 0),
    ],
    "q.allowed.test",
)
def test_pure_answer_credits_only_the_query_names_chain(
    records: list[tuple[str, str, str, int]], asked: str
) -> None:
    """Attack: an allowed name's answer also carries records for other names (``evil.test``), or a CNAME
    to a name the policy does not allow, hoping the proxy writes those IPs to the ipcache for the pod.
    Precedents: cilium/cilium#30588 "FQDN Policies ignore CNAMEs returned during lookup" (which
    records count for a name), cilium/cilium#39926 "dnsproxy: don't verify names of answers" (the
    question must match, the answer's owners are not checked — so crediting must follow the chain
    from the question). Expected: exactly the chain's A/AAAA, each with the lowest TTL on its path."""
    request = dnslib.DNSRecord.question(asked)
    reply = request.reply()
    for owner, kind, data, ttl in records:
        rdata = {"A": dnslib.A, "AAAA": dnslib.AAAA, "CNAME": dnslib.CNAME}[kind](data)
        reply.add_answer(dnslib.RR(owner, getattr(dnslib.QTYPE, kind), rdata=rdata, ttl=ttl))
    packed = bytes(reply.pack())
    query = wire.parse_query(bytes(request.pack()))
    got = answer_ips(packed, query.qname, len(query.question))
    # owner names compare case-insensitively and a TTL with the top bit set counts as 0 (RFC 2181 §8):
    # two records that differ only there are one
    normal = {(o.lower(), k, d, 0 if t >= 2**31 else t) for o, k, d, t in records}
    assert len(got) == len(set(got)) or len(records) != len(normal)
    assert set(got) == chain_oracle(query.qname, records)


def test_pure_answer_with_a_pointer_loop_is_malformed_quickly() -> None:
    """Attack: an answer whose owner name is a compression loop (label ``a`` then a pointer back to it).
    Precedents: RFC 9267 §2 (compression pointer validation); haproxy "BUG/MEDIUM: resolvers: fix name
    compression pointer validation in resolv_read_name()". Expected: MalformedMessage (→ SERVFAIL to
    the client) in bounded time."""
    request = dnslib.DNSRecord.question("q.allowed.test")
    query = wire.parse_query(bytes(request.pack()))
    header = bytearray(bytes(request.reply().pack()))
    header[6:8] = b"\x00\x01"
    loop_at = len(header)
    record = b"\x01a" + struct.pack("!H", 0xC000 | loop_at) + b"\x00\x01\x00\x01\x00\x00\x00\x3c"
    record += b"\x00\x04\x0a\x00\x00\x01"
    started = time.perf_counter()
    with pytest.raises(MalformedMessage):
        answer_ips(bytes(header) + record, query.qname, len(query.question))
    assert time.perf_counter() - started < 0.01


# -- end to end: a DNSProxy on loopback in its own namespace, with a fake upstream -------------------

SENTINEL = dnslib.DNSRecord.question("l7gadv-sentinel.refused.invalid")
SENTINEL.header.id = 0xBEEF
SENTINEL_QUERY = bytes(SENTINEL.pack())
SENTINEL_REPLY = wire.error_reply(
    0xBEEF, wire.parse_query(SENTINEL_QUERY).flags, wire.parse_query(SENTINEL_QUERY).question, wire.REFUSED
)
TIMEOUT = 0.3  # the proxy's deadline in these tests (SERVFAIL after it)


@dataclass
class Running:
    """A DNSProxy and a fake upstream on an event loop in a thread inside a private namespace."""

    loop: asyncio.AbstractEventLoop
    upstream_port: int
    proxy: DNSProxy
    errors: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[str, str, tuple[tuple[str, int], ...]]] = field(default_factory=list)
    upstream_seen: list[bytes] = field(default_factory=list)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def _upstream(running: list[Running]) -> tuple[asyncio.DatagramTransport, asyncio.Server, int]:
    """Answers every query with one A record, except names starting with ``drop`` (no answer: SERVFAIL)
    and ``loop`` (an answer whose record owner is a compression loop: SERVFAIL)."""
    loop = asyncio.get_running_loop()

    def respond(data: bytes) -> bytes | None:
        running[0].upstream_seen.append(data)
        query = wire.parse_query(data)
        if query.qname.startswith("drop"):
            return None
        if query.qname.startswith("loop"):
            head = bytearray(upstream_answer(query)[: 12 + len(query.question)])
            at = len(head)
            return bytes(head) + b"\x01a" + struct.pack("!H", 0xC000 | at) + b"\x00\x01\x00\x01" + b"\x00" * 6
        return upstream_answer(query)

    class Udp(asyncio.DatagramProtocol):
        transport: asyncio.DatagramTransport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            reply = respond(data)
            if reply is not None:
                self.transport.sendto(reply, addr)

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                reply = respond(await reader.readexactly(length))
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
        writer.close()

    transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    server = await asyncio.start_server(tcp, "127.0.0.1", port)
    return transport, server, port


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    if os.geteuid() != 0:
        pytest.fail("needs root (a network namespace with nft tproxy)", pytrace=False)
    with loopback_lab() as ns:
        ready = threading.Event()
        holder: list[Running] = []
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def main() -> None:
            try:
                fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError("setns failed")
                finally:
                    os.close(fd)
                asyncio.set_event_loop(loop)
                loop.set_exception_handler(lambda _loop, context: holder[0].errors.append(context))
                transport, server, port = loop.run_until_complete(_upstream(holder))
                proxy = DNSProxy(
                    Listeners.create(PROXY_PORT, ipv6=False),
                    POLICY,
                    lambda source, qname, ips: holder[0].answers.append((source, qname, ips)),
                    config=ProxyConfig(timeout=TIMEOUT, tcp_idle_timeout=1.0),
                )
                holder.append(Running(loop, port, proxy))
                loop.run_until_complete(proxy.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the fixture
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(proxy.aclose())
            transport.close()
            server.close()
            loop.run_until_complete(server.wait_closed())
            loop.close()

        thread = threading.Thread(target=main, name="l7gadv-dnsfuzz", daemon=True)
        thread.start()
        ready.wait(30)
        try:
            if failure:
                raise failure[0]
            yield holder[0]
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


def check_forwarded(reply: bytes, message: bytes, expect: Expect, running: Running) -> None:
    query = wire.parse_query(message)
    labels = expect.labels
    if labels and (labels[0].lower().startswith(b"drop") or labels[0].lower().startswith(b"loop")):
        check_proxy_reply(reply, Expect("servfail", expect.ident, expect.flags, expect.question))
        return
    assert reply == upstream_answer(query)  # the server's answer, the client's own ID
    parsed = dnslib.DNSRecord.parse(reply)
    assert parsed.header.id == expect.ident and [str(rr.rdata) for rr in parsed.rr] == [UPSTREAM_IP]


def _wanted(expect: Expect) -> bool:
    return expect.kind != "drop"


async def udp_round(running: Running, message: bytes) -> list[bytes]:
    """Send ``message`` then the sentinel (a name the policy refuses) from one socket; return every
    datagram until the sentinel's REFUSED and — if the oracle expects one — the message's reply came.
    The proxy answers on its own synchronously and in order, so the sentinel's reply bounds the wait
    for messages that get no reply."""
    loop = asyncio.get_running_loop()
    expect = oracle(message)
    server = ("127.0.0.1", running.upstream_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((CLIENT, 0))
        await loop.sock_sendto(sock, message, server)
        await loop.sock_sendto(sock, SENTINEL_QUERY, server)
        got: list[bytes] = []
        sentinel = False
        async with asyncio.timeout(TIMEOUT + 2):
            while not sentinel or (_wanted(expect) and len(got) < 1):
                data, source = await loop.sock_recvfrom(sock, 65535)
                assert source == server  # every reply comes from the server the client asked
                if data == SENTINEL_REPLY and not sentinel:
                    sentinel = True
                else:
                    got.append(data)
        with contextlib.suppress(TimeoutError):  # nothing else may follow (one reply per query)
            async with asyncio.timeout(0.002):
                extra, _ = await loop.sock_recvfrom(sock, 65535)
                got.append(extra)
        return got


async def tcp_round(running: Running, frames: bytes, replies: int) -> list[bytes]:
    """Write ``frames`` on one connection, half-close, and read length-prefixed replies until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", running.upstream_port, local_addr=(CLIENT, 0))
    try:
        writer.write(frames)
        await writer.drain()
        writer.write_eof()
        got = []
        async with asyncio.timeout(TIMEOUT + 3):
            while True:
                try:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    got.append(await reader.readexactly(length))
                except asyncio.IncompleteReadError as exc:
                    assert exc.partial == b""  # the proxy never writes half a reply
                    break
        return got
    finally:
        writer.close()


def check_one(reply: bytes, message: bytes, running: Running) -> None:
    expect = oracle(message)
    if expect.kind == "forward":
        check_forwarded(reply, message, expect, running)
    else:
        check_proxy_reply(reply, expect)


def settle(running: Running) -> None:
    deadline = time.monotonic() + TIMEOUT + 2
    while running.proxy.stats.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.proxy.stats.in_flight == 0
    assert running.errors == [], running.errors  # no exception escaped a callback or a task


@pytest.mark.root
@fuzz_settings(400)
@given(MESSAGES)
def test_udp_fuzz_through_a_running_proxy(running: Running, message: bytes) -> None:
    before = len(running.upstream_seen)
    got = running.run(udp_round(running, message))
    expect = oracle(message)
    event(f"oracle: {expect.kind}")
    if expect.kind == "drop":
        assert got == []
    else:
        assert len(got) == 1, got
        check_one(got[0], message, running)
    forwarded = running.upstream_seen[before:]
    assert (expect.kind == "forward") == (len(forwarded) == 1)  # refused: nothing went upstream
    if forwarded:  # a fresh ID upstream, the question exactly as asked (0x20 case kept)
        assert forwarded[0][12:] == message[12:]
    settle(running)


@pytest.mark.root
@fuzz_settings(150)
@given(st.lists(MESSAGES, min_size=1, max_size=6))
def test_tcp_fuzz_several_queries_per_connection(running: Running, messages: list[bytes]) -> None:
    """Several queries on one TCP connection (pipelined, answered concurrently): one reply per message
    that gets one, each obeying the contract, matched to its message by ID and question."""
    messages = [m[:65535] for m in messages]
    frames = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
    got = running.run(tcp_round(running, frames, len(messages)))
    expected = [m for m in messages if oracle(m).kind != "drop"]
    assert len(got) == len(expected)
    pending = list(expected)
    for reply in got:  # replies may come in any order: find the message each one answers
        for message in pending:
            try:
                check_one(reply, message, running)
            except AssertionError:
                continue
            pending.remove(message)
            break
        else:
            raise AssertionError(f"reply {reply!r} answers none of {pending!r}")
    settle(running)


@pytest.mark.root
@fuzz_settings(100)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), MESSAGES), min_size=1, max_size=4))
def test_tcp_stream_with_lying_length_prefixes(running: Running, frames: list[tuple[int, bytes]]) -> None:
    """Attack: length prefixes that do not match the message (shorter: the rest is read as the next
    frame; longer: the stream ends mid-message; zero). Precedents: RFC 7766 (DNS over TCP: framing,
    pipelining); cilium/cilium#31197 "Cilium fqdn/dnsproxy fails with FQDN dns policy when DNS
    response is truncated" (the TCP fallback goes through the proxy).
    Expected: every complete frame is judged on its own bytes, every reply obeys the contract, an
    incomplete last frame gets nothing, and the proxy keeps serving the next connection."""
    stream = b"".join(length.to_bytes(2, "big") + message for length, message in frames)
    # What the proxy must see: split the stream by its own prefixes.
    complete: list[bytes] = []
    pos = 0
    while pos + 2 <= len(stream):
        length = int.from_bytes(stream[pos : pos + 2], "big")
        if pos + 2 + length > len(stream):
            break
        complete.append(stream[pos + 2 : pos + 2 + length])
        pos += 2 + length
    got = running.run(tcp_round(running, stream, 0))
    assert len(got) == sum(oracle(m).kind != "drop" for m in complete)
    pending = [m for m in complete if oracle(m).kind != "drop"]
    for reply in got:
        assert reply[2] & 0x80  # a response, never an echo of the client's bytes
        for message in pending:
            try:
                check_one(reply, message, running)
            except AssertionError:
                continue
            pending.remove(message)
            break
        else:
            raise AssertionError(f"reply {reply!r} answers none of {pending!r}")
    settle(running)
    # the next legitimate query still works
    ok = dnslib.DNSRecord.question("www.allowed.test")
    assert running.run(tcp_round(running, len(ok.pack()).to_bytes(2, "big") + ok.pack(), 1))[0][3] & 0xF == 0


@pytest.mark.root
def test_health_after_fuzzing(running: Running) -> None:
    """Runs last in this module: the proxy still answers and the stats add up."""
    ok = bytes(dnslib.DNSRecord.question("Www.Allowed.Test").pack())
    got = running.run(udp_round(running, ok))
    assert len(got) == 1
    check_one(got[0], ok, running)
    settle(running)


def _largest_write_buffer() -> int:
    """The largest write buffer of any stream transport in this process (the proxy's side of a TCP
    connection is one of them)."""
    import gc

    sizes = [
        obj.get_write_buffer_size()
        for obj in gc.get_objects()
        if isinstance(obj, asyncio.WriteTransport)
        and not obj.is_closing()
        and not isinstance(obj, asyncio.DatagramTransport)
    ]
    return max(sizes, default=0)


@pytest.mark.root
def test_tcp_client_that_never_reads_cannot_grow_the_proxys_memory(running: Running) -> None:
    """Attack: a pod opens one TCP connection to its DNS server and streams queries for a refused name
    (the largest reply: the 255-octet question echoed) without ever reading the replies. If the proxy
    keeps reading and queueing replies, its memory grows at the pod's send rate (a node-wide DoS of
    DNS). Precedents: Envoy/Istio ISTIO-SECURITY-2019-004 (HTTP/2 floods whose queued responses —
    PING ACKs, RST_STREAMs, SETTINGS ACKs — grow memory without bound while the peer does not read);
    Envoy CVE-2024-27919 (CONTINUATION flood: unlimited memory). Expected: the proxy stops reading the
    connection while its replies are not being read (write buffer bounded), and serves others."""
    long_name = ".".join(["r" * 63] * 3 + ["refused", "test"])
    message = bytes(dnslib.DNSRecord.question(long_name).pack())
    frame = len(message).to_bytes(2, "big") + message
    chunk = frame * 2000  # ~0.5 MB of queries, ~0.5 MB of replies

    async def flood() -> tuple[int, int]:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", running.upstream_port, local_addr=(CLIENT, 0)
        )
        sent = 0
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    for _ in range(80):  # up to ~40 MB if the proxy never pushes back
                        writer.write(chunk)
                        await writer.drain()
                        sent += len(chunk)
            await asyncio.sleep(0.2)
            largest = await asyncio.get_running_loop().run_in_executor(None, _largest_write_buffer)
            # meanwhile another client is served normally
            ok = bytes(dnslib.DNSRecord.question("www.allowed.test").pack())
            other = await tcp_round(running, len(ok).to_bytes(2, "big") + ok, 1)
            assert len(other) == 1 and other[0][3] & 0xF == 0
            return sent, largest
        finally:
            writer.transport.abort()

    sent, largest = running.run(flood(), timeout=30)
    assert largest < 2 * 1024 * 1024, f"the proxy buffered {largest} bytes of replies (client sent {sent})"
    settle(running)
