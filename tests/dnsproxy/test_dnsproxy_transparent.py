"""The proxy for real: client netns → router netns (nft tproxy → proxy) → server netns running dnsmasq,
queried with dig. The answer must come from the server the client asked (dig's SERVER line)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dnsproxy_harness import new_name, run_in_netns, sh, wait_for

from dnsproxy import DNSProxy, Listeners, QueryEvent, allow_names
from l7 import procs
from l7.policy import fqdn

pytestmark = pytest.mark.root

PORT = 15353
SERVER4, SERVER6 = "10.215.2.2", "fd00:215::12"


@dataclass
class Lab:
    client: str
    router: str
    server: str


def _ns(*argv: str, ns: str) -> None:
    sh("ip", "-n", ns, *argv)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    tag = new_name()[5:]
    names = Lab(f"l7gd-c{tag}", f"l7gd-r{tag}", f"l7gd-s{tag}")
    made: list[str] = []
    dnsmasq: procs.Process | None = None
    try:
        for ns in (names.client, names.router, names.server):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            _ns("link", "set", "lo", "up", ns=ns)
        c, r, s = names.client, names.router, names.server
        _ns("link", "add", "c0", "type", "veth", "peer", "name", "rc", "netns", r, ns=c)
        _ns("link", "add", "s0", "type", "veth", "peer", "name", "rs", "netns", r, ns=s)
        for ns, dev, v4, v6 in ((c, "c0", "10.215.1.2/24", "fd00:215::2/128"),
                                (r, "rc", "10.215.1.1/24", "fd00:215::1/128"),
                                (r, "rs", "10.215.2.1/24", "fd00:215::11/128"),
                                (s, "s0", "10.215.2.2/24", "fd00:215::12/128")):
            _ns("addr", "add", v4, "dev", dev, ns=ns)
            _ns("-6", "addr", "add", v6, "dev", dev, "nodad", ns=ns)
            _ns("link", "set", dev, "up", ns=ns)
        _ns("route", "add", "10.215.0.0/16", "via", "10.215.1.1", ns=c)
        _ns("-6", "route", "add", "fd00:215::1/128", "dev", "c0", ns=c)
        _ns("-6", "route", "add", "fd00:215::/64", "via", "fd00:215::1", "dev", "c0", ns=c)
        _ns("route", "add", "10.215.0.0/16", "via", "10.215.2.1", ns=s)
        _ns("-6", "route", "add", "fd00:215::11/128", "dev", "s0", ns=s)
        _ns("-6", "route", "add", "fd00:215::/64", "via", "fd00:215::11", "dev", "s0", ns=s)
        _ns("-6", "route", "add", "fd00:215::2/128", "dev", "rc", ns=r)
        _ns("-6", "route", "add", "fd00:215::12/128", "dev", "rs", ns=r)
        sh("ip", "netns", "exec", r, "sysctl", "-qw",
           "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        sh("ip", "netns", "exec", r, "nft", "-f", "-", stdin=f"""
table inet l7gd {{
  chain pre {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "rc" meta l4proto {{ tcp, udp }} th dport 53 meta mark set 0x1 tproxy ip to :{PORT} accept
    iifname "rc" meta l4proto {{ tcp, udp }} th dport 53 meta mark set 0x1 tproxy ip6 to :{PORT} accept
  }}
}}
""")
        for family in ("-4", "-6"):
            _ns(family, "rule", "add", "fwmark", "1", "lookup", "100", ns=r)
            _ns(family, "route", "add", "local", "default", "dev", "lo", "table", "100", ns=r)
        dnsmasq = procs.spawn(
            ["ip", "netns", "exec", s, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--port", "53",
             f"--listen-address={SERVER4},{SERVER6}", "--bind-interfaces", "--pid-file=",
             "--address=/example.test/10.215.9.9", "--address=/example.test/fd00:215::99",
             "--address=/blocked.test/10.215.9.10", "--host-record=host.cdn.test,10.215.9.8",
             "--cname=alias.example.test,host.cdn.test"],
        )
        wait_for(lambda: f"{SERVER6}]:53" in sh("ip", "netns", "exec", s, "ss", "-Hlun").stdout,
                 what="dnsmasq listening")
        yield names
    finally:
        if dnsmasq is not None:
            dnsmasq.stop()
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def the_lab() -> Iterator[Lab]:
    with lab() as made:
        yield made


async def dig(client: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", client, "dig", "+time=3", "+tries=1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return out.decode()


def status(output: str) -> str:
    match = re.search(r"status: (\w+)", output)
    assert match, output
    return match.group(1)


def run_proxy_and_dig(the_lab: Lab, *digs: tuple[str, ...]) -> tuple[list[str], list[QueryEvent], list[Any]]:
    events: list[QueryEvent] = []
    learned: list[Any] = []

    async def main() -> list[str]:
        proxy = DNSProxy(
            Listeners.create(PORT), allow_names([fqdn.match_pattern("*.example.test")]),
            lambda source, qname, ips: learned.append((source, qname, ips)), on_event=events.append,
        )
        async with proxy:
            return [await dig(the_lab.client, *args) for args in digs]

    return run_in_netns(the_lab.router, main), events, learned


def test_udp_ipv4_allowed_and_refused(the_lab: Lab) -> None:
    (allowed, alias, refused), events, learned = run_proxy_and_dig(
        the_lab, (f"@{SERVER4}", "www.example.test", "A"), (f"@{SERVER4}", "ALIAS.example.TEST", "A"),
        (f"@{SERVER4}", "www.blocked.test", "A"),
    )
    assert status(allowed) == "NOERROR", allowed
    assert re.search(r"www\.example\.test\.\s+\d+\s+IN\s+A\s+10\.215\.9\.9", allowed), allowed
    assert f"SERVER: {SERVER4}#53({SERVER4}) (UDP)" in allowed, allowed
    assert status(alias) == "NOERROR" and "10.215.9.8" in alias, alias
    assert status(refused) == "REFUSED", refused
    assert f"SERVER: {SERVER4}#53" in refused
    # the answer chain's A record is credited to the query name, before the answer was released
    assert [(source, qname, [ip for ip, _ in ips]) for source, qname, ips in learned] == [
        ("10.215.1.2", "www.example.test", ["10.215.9.9"]),
        ("10.215.1.2", "alias.example.test", ["10.215.9.8"]),
    ]
    assert [e.verdict for e in events] == ["allowed", "allowed", "refused"]
    assert all(e.server_ip == SERVER4 and e.server_port == 53 and e.source_ip == "10.215.1.2" for e in events)


def test_tcp(the_lab: Lab) -> None:
    (allowed, refused), events, _ = run_proxy_and_dig(
        the_lab, ("+tcp", f"@{SERVER4}", "www.example.test", "A"), ("+tcp", f"@{SERVER4}", "evil.test", "A"),
    )
    assert status(allowed) == "NOERROR" and "10.215.9.9" in allowed, allowed
    assert f"SERVER: {SERVER4}#53({SERVER4}) (TCP)" in allowed, allowed
    assert status(refused) == "REFUSED", refused
    assert [e.protocol for e in events] == ["tcp", "tcp"]


def test_ipv6_transport_and_aaaa(the_lab: Lab) -> None:
    (udp, tcp, refused), events, _ = run_proxy_and_dig(
        the_lab, ("-6", f"@{SERVER6}", "www.example.test", "AAAA"),
        ("-6", "+tcp", f"@{SERVER6}", "www.example.test", "AAAA"), ("-6", f"@{SERVER6}", "evil.test", "A"),
    )
    assert status(udp) == "NOERROR" and "fd00:215::99" in udp, udp
    assert f"SERVER: {SERVER6}#53({SERVER6}) (UDP)" in udp, udp
    assert status(tcp) == "NOERROR" and f"SERVER: {SERVER6}#53({SERVER6}) (TCP)" in tcp, tcp
    assert status(refused) == "REFUSED", refused
    assert all(e.source_ip == "fd00:215::2" and e.server_ip == SERVER6 for e in events)
    assert any(e.ips and e.ips[0][0] == "fd00:215::99" for e in events)
