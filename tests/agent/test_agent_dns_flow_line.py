"""The DNS flow record's template encoder (l7.agent.dns.flow_line) writes what json.dumps of the record
would mean, and the flow reader (``l7gate observe``) reads it. Pure: no root, no lab."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dnsproxy import QueryEvent
from l7.agent.dns import flow_line, flow_record
from l7.flows import FlowLog, FlowReader

EVENTS = st.builds(
    QueryEvent,
    source_ip=st.sampled_from(["10.0.0.7", "fd00::7"]),
    source_port=st.integers(0, 65535),
    server_ip=st.sampled_from(["10.96.0.10", "fd00:96::a"]),
    server_port=st.integers(0, 65535),
    protocol=st.sampled_from(["udp", "tcp"]),
    qname=st.text(),  # the proxy's names are escaped (\DDD), but any str must come out valid
    qtype=st.integers(0, 65535),
    rcode=st.integers(-1, 15),
    ips=st.lists(
        st.tuples(st.sampled_from(["192.0.2.1", "2001:db8::1"]), st.integers(0, 2**31 - 1)), max_size=3
    ).map(tuple),
    verdict=st.sampled_from(["allowed", "refused", "overload", "servfail", "timeout", "audit"]),
)


@given(when=st.floats(0, 4e9, allow_nan=False), endpoint=st.none() | st.text(), event=EVENTS)
def test_the_template_line_is_the_record(when: float, endpoint: str | None, event: QueryEvent) -> None:
    line = flow_line(when, endpoint, event)
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert json.loads(line) == flow_record(when, endpoint, event)


def test_the_flow_reader_reads_template_lines(tmp_path: Path) -> None:
    event = QueryEvent(
        "10.0.0.7",
        40000,
        "10.96.0.10",
        53,
        "udp",
        'we"ird\\092.example',
        1,
        0,
        (("192.0.2.1", 30),),
        "allowed",
    )
    refused = event._replace(qname="blocked.test", rcode=5, ips=(), verdict="refused")
    log = FlowLog(tmp_path / "flows-n1-dns.jsonl")
    log.write_lines(flow_line(100.5, "default/client", event) + flow_line(101.0, None, refused))
    log.close()
    flows = FlowReader(tmp_path).poll()
    assert [(f.dns_qname, f.verdict, f.dns_rcode, f.dns_ips, f.src) for f in flows] == [
        ('we"ird\\092.example', "allowed", "NOERROR", ("192.0.2.1",), "default/client"),
        ("blocked.test", "denied", "REFUSED", (), ""),
    ]
