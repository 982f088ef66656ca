"""Wire parsing and answer-chain extraction, checked against dnslib and fuzzed."""

from __future__ import annotations

import contextlib

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsproxy import MalformedMessage, wire
from dnsproxy.answers import answer_ips

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
LABEL = st.text(alphabet=LETTERS, min_size=1, max_size=20)
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join)
QTYPES = st.sampled_from(["A", "AAAA", "CNAME", "TXT", "MX", "ANY", "SRV"])


@given(NAME, QTYPES, st.integers(0, 65535), st.booleans())
def test_parse_query_agrees_with_dnslib(name: str, qtype: str, ident: int, edns: bool) -> None:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = ident
    if edns:
        q.add_ar(dnslib.EDNS0(udp_len=1232))
    data = q.pack()
    got = wire.parse_query(data)
    assert got.id == ident
    assert got.qname == name.lower()
    assert got.qtype == getattr(dnslib.QTYPE, qtype)
    assert got.qclass == 1
    assert got.question == data[12 : 12 + len(got.question)]
    assert wire.reply_matches(q.reply().pack(), got.question)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_parse_query_never_crashes(data: bytes) -> None:
    try:
        wire.parse_query(data)
    except MalformedMessage as exc:
        assert 0 <= exc.offset <= len(data)
        reply = wire.header_reply(data, wire.FORMERR)
        if len(data) < 12 or data[2] & 0x80:
            assert reply is None
        else:
            assert reply is not None
            parsed = dnslib.DNSRecord.parse(reply)
            assert parsed.header.rcode == dnslib.RCODE.FORMERR
            assert parsed.header.id == (data[0] << 8) | data[1]


@settings(max_examples=300)
@given(NAME, st.binary(max_size=200))
def test_answer_parsing_never_crashes(name: str, tail: bytes) -> None:
    q = dnslib.DNSRecord.question(name)
    header = bytearray(q.reply().pack())
    header[7] = 3  # claim three answers
    with contextlib.suppress(MalformedMessage):
        answer_ips(bytes(header) + tail, name.lower(), len(wire.parse_query(q.pack()).question))


@pytest.mark.parametrize("rcode", [wire.REFUSED, wire.NXDOMAIN, wire.SERVFAIL, wire.FORMERR])
def test_error_reply_echoes_the_question(rcode: int) -> None:
    q = dnslib.DNSRecord.question("MiXeD.example.test", "AAAA")
    q.header.id = 321
    q.header.rd = 1
    parsed = wire.parse_query(q.pack())
    reply = dnslib.DNSRecord.parse(wire.error_reply(parsed.id, parsed.flags, parsed.question, rcode))
    assert reply.header.rcode == rcode and reply.header.id == 321 and reply.header.rd == 1
    assert reply.header.qr == 1 and reply.questions == q.questions and not reply.rr


def test_multiple_questions_and_compressed_question_are_malformed() -> None:
    q = dnslib.DNSRecord.question("a.test")
    q.add_question(dnslib.DNSQuestion("b.test"))
    with pytest.raises(MalformedMessage, match="2 questions"):
        wire.parse_query(q.pack())
    pointer = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    with pytest.raises(MalformedMessage):
        wire.parse_query(pointer)


def test_unusual_label_bytes_are_escaped() -> None:
    data = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x0bexample.com\x00\x00\x01\x00\x01"
    assert wire.parse_query(data).qname == "example\\046com"  # one label with a dot: never "example.com"


def reply_with(qname: str, *zone: str, extra: tuple[str, ...] = ()) -> tuple[bytes, int]:
    q = dnslib.DNSRecord.question(qname)
    r = q.reply()
    for text in zone:
        r.add_answer(*dnslib.RR.fromZone(text))
    for text in extra:
        r.add_ar(*dnslib.RR.fromZone(text))
    return r.pack(), len(wire.parse_query(q.pack()).question)


def test_cname_chain_is_followed_from_the_query_name() -> None:
    data, qlen = reply_with(
        "WWW.Example.test",
        "www.example.test 300 CNAME edge.CDN.test",
        "edge.cdn.test 30 CNAME host.cdn.test",
        "HOST.cdn.test 100 A 10.215.0.1",
        "host.cdn.test 100 AAAA fd00:215::1",
        "unrelated.test 100 A 10.215.0.66",
        extra=("host.cdn.test 100 A 10.215.0.77",),
    )
    assert answer_ips(data, "www.example.test", qlen) == (("10.215.0.1", 30), ("fd00:215::1", 30))


def test_records_for_other_names_are_ignored() -> None:
    data, qlen = reply_with("a.test", "b.test 60 A 10.215.0.2", "a.test 60 A 10.215.0.3")
    assert answer_ips(data, "a.test", qlen) == (("10.215.0.3", 60),)


def test_cname_loop_and_out_of_order_records() -> None:
    data, qlen = reply_with(
        "a.test", "c.test 9 A 10.215.0.9", "b.test 60 CNAME a.test", "a.test 60 CNAME b.test",
    )
    assert answer_ips(data, "a.test", qlen) == ()
    data, qlen = reply_with("a.test", "b.test 50 A 10.215.0.5", "a.test 70 CNAME b.test")
    assert answer_ips(data, "a.test", qlen) == (("10.215.0.5", 50),)
