"""Adversarial DNS through the lab (issue 11, "Our own adversarial suite: DNS"): real dnsmasq as
kube-dns, a hostile DNS server pod, the node agent's DNS proxy and datapath, and raw UDP/TCP sockets,
dig and curl from a pod.

The lab is ``deploy/lab/fqdn.yaml`` plus a ``probe`` pod, a ``hostile-dns`` pod (kube-system) that
answers with TTL 0, TTL 2^32-1, a CNAME to a name the policy does not allow, or a compression loop, and
two world hosts ``target.adv.test`` and ``bystander.test``. Lab name ``l7gadv-<pid>``, taken down in a
finalizer. The policy under attack (``POLICY``): the probe may ask kube-dns and hostile-dns only names
under ``*.adv.test`` (``rules.dns``), and may connect on port 80 only to what ``*.adv.test`` resolved
to (``toFQDNs``).

Already covered elsewhere (not repeated): 0x20 case and DNS over TCP, a server the policy does not
allow, an answer with a record for another name, CNAME chains (tests/agent/test_agent_dns.py); every
message shape against an in-process proxy (tests/security/test_fuzz_dns.py).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dnslib
import pytest
import yaml

from l7.lab import Lab, down
from l7.lab.topology import parse_topology
from tests.agent.fqdn_helpers import (
    CURL_TIMEOUT,
    DIG_NO_SERVER,
    LAB_FILES,
    apply,
    cnp,
    curl,
    dig,
    python,
    status_of,
)

pytestmark = pytest.mark.root

NAME = f"l7gadv-{os.getpid() % 100000}"
HOSTILE_CONF = Path(f"/tmp/{NAME}-hostile.json")
NODE = "node-1"
PROBE = "demo/probe"

# UDP and TCP on 53. The answer depends on the first label of the question: ttl0, ttlmax (2^32-1),
# cname-out (CNAME to bystander.test + its A record), loop (the answer's owner name is a compression
# loop); anything else: A target, TTL 30. argv: JSON file {"target": ip, "bystander": ip}.
HOSTILE_DNS = r"""
import json, socket, struct, sys, threading
conf = sys.argv[1]
def wire(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0"
def answer(q):
    c = json.load(open(conf))
    end = 12
    while q[end]:
        end += q[end] + 1
    question = q[12:end + 5]
    first = q[13:13 + q[12]].decode("ascii", "replace").lower()
    def a(owner, ip, ttl):
        return owner + struct.pack("!HHIH", 1, 1, ttl, 4) + socket.inet_aton(ip)
    if first == "ttl0":
        rrs = [a(b"\xc0\x0c", c["target"], 0)]
    elif first == "ttlmax":
        rrs = [a(b"\xc0\x0c", c["target"], 0xFFFFFFFF)]
    elif first == "cname-out":
        target = wire("bystander.test")
        rrs = [b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 30, len(target)) + target,
               a(wire("bystander.test"), c["bystander"], 30)]
    elif first == "loop":
        at = 12 + len(question)
        rrs = [b"\x01a" + struct.pack("!H", 0xC000 | at) + struct.pack("!HHIH", 1, 1, 30, 4)
               + socket.inet_aton(c["bystander"])]
    else:
        rrs = [a(b"\xc0\x0c", c["target"], 30)]
    head = struct.pack("!HHHHH", 0x8180 | (q[2] & 1) << 8, 1, len(rrs), 0, 0)
    return q[:2] + head + question + b"".join(rrs)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 53)); t.listen(64)
def tcp():
    while True:
        c, _ = t.accept()
        try:
            n = int.from_bytes(c.recv(2), "big"); q = b""
            while len(q) < n:
                q += c.recv(n - len(q))
            r = answer(q); c.sendall(len(r).to_bytes(2, "big") + r)
        except Exception:
            pass
        c.close()
threading.Thread(target=tcp, daemon=True).start()
while True:
    q, addr = u.recvfrom(4096)
    try:
        u.sendto(answer(q), addr)
    except Exception:
        pass
"""

# Raw DNS from a pod. argv: server, port, JSON [[kind, hex], ...]; kind "udp" (one datagram, the first
# reply or null) or "tcp" (the bytes as one stream, half-closed; every length-prefixed reply until EOF).
RAW_DNS = r"""
import json, socket, sys
server, port, ops = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
out = []
for kind, data in ops:
    data = bytes.fromhex(data)
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        s.sendto(data, (server, port))
        try:
            out.append(s.recv(65535).hex())
        except OSError:
            out.append(None)
        s.close()
        continue
    s = socket.socket(); s.settimeout(15)
    try:
        s.connect((server, port))
    except OSError as exc:
        out.append(repr(exc)); continue
    s.sendall(data); s.shutdown(socket.SHUT_WR)
    buf = b""
    try:
        while True:
            d = s.recv(65535)
            if not d:
                break
            buf += d
    except OSError:
        pass
    s.close()
    replies = []
    while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
        n = int.from_bytes(buf[:2], "big"); replies.append(buf[2:2 + n].hex()); buf = buf[2 + n:]
    out.append(replies)
print(json.dumps(out))
"""


def topology() -> dict[str, Any]:
    topo: dict[str, Any] = yaml.safe_load((LAB_FILES / "fqdn.yaml").read_text())
    topo["pods"] += [
        {"name": "probe", "namespace": "demo", "labels": {"app": "probe"}, "ipv6": False},
        {
            "name": "hostile-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "hostile-dns"},
            "commands": [["python3", "-I", "-c", HOSTILE_DNS, str(HOSTILE_CONF)]],
        },
    ]
    topo["world"] += [
        {"name": "target", "names": ["target.adv.test"]},
        {"name": "bystander", "names": ["bystander.test"]},
    ]
    return topo


POLICY = cnp(
    "adversarial-dns",
    "demo",
    {
        "endpointSelector": {"matchLabels": {"app": "probe"}},
        "egress": [
            {
                "toEndpoints": [
                    {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": app}}
                    for app in ("kube-dns", "hostile-dns")
                ],
                "toPorts": [
                    {
                        "ports": [{"port": "53", "protocol": "ANY"}],
                        "rules": {"dns": [{"matchPattern": "*.adv.test"}]},
                    }
                ],
            },
            {"toFQDNs": [{"matchPattern": "*.adv.test"}], "toPorts": [{"ports": [{"port": "80"}]}]},
        ],
    },
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    try:
        built = Lab.up(parse_topology(topology(), "<test_adv_dns_lab>"), NAME)
        HOSTILE_CONF.write_text(
            json.dumps({"target": world(built, "target"), "bystander": world(built, "bystander")})
        )
        apply(NAME, tmp_path_factory.mktemp("adv-policy"), POLICY)
        yield built
    finally:
        down(NAME)
        HOSTILE_CONF.unlink(missing_ok=True)


def world(lab: Lab, name: str) -> str:
    return next(ip for ip in lab.plan.world(name).ips if ":" not in ip)


def kube_dns(lab: Lab) -> str:
    return next(ip for ip in lab.pod("kube-system/kube-dns").ips if ":" not in ip)


def hostile(lab: Lab) -> str:
    return next(ip for ip in lab.pod("kube-system/hostile-dns").ips if ":" not in ip)


def raw(lab: Lab, server: str, ops: list[tuple[str, bytes]], port: int = 53) -> list[Any]:
    result: Any = python(lab, PROBE, RAW_DNS, server, str(port), json.dumps([(k, d.hex()) for k, d in ops]))
    return list(result)


def q(name: str, qtype: str = "A", ident: int = 0x1234) -> bytes:
    record = dnslib.DNSRecord.question(name, qtype)
    record.header.id = ident
    return bytes(record.pack())


def header(ident: int, *, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def rcode(reply_hex: str | None) -> tuple[int, int, int] | None:
    """(ID, QR, rcode) of a reply."""
    if reply_hex is None:
        return None
    data = bytes.fromhex(reply_hex)
    return int.from_bytes(data[:2], "big"), data[2] >> 7, data[3] & 0x0F


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def test_hostile_queries_get_formerr_or_refused_and_never_reach_a_server(lab: Lab) -> None:
    """Attack: malformed and hostile queries from a pod to kube-dns (UDP), hoping to crash or confuse
    the proxy, or to get a name past ``*.adv.test`` that the server reads differently. Targets:
    ``rules.dns`` matchPattern ``*.adv.test``. Expected: FORMERR / REFUSED with the ID echoed (or no
    answer for a message that is itself a response), nothing crashes, the next query works.
    Precedents: RFC 9267 (Forescout's "Common Implementation Anti-Patterns Related to DNS RR
    Processing": compression pointer, label/name length and NUL-terminator validation); nginx's resolver
    fix "explicit check for compression pointers in question"; haproxy "BUG/MEDIUM: resolvers: fix name
    compression pointer validation"; Cilium's DNS proxy answers FORMERR to multi-question queries."""
    server = kube_dns(lab)
    pointer_to_itself = header(0x0101) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    label_then_loop = header(0x0102) + b"\x06target\x03adv\xc0\x0c" + b"\x00\x01\x00\x01"
    two = dnslib.DNSRecord.question("target.adv.test")
    two.add_question(dnslib.DNSQuestion("evil.test"))
    two.header.id = 0x0103
    zero = header(0x0104, qd=0)
    long_label = header(0x0105) + b"\x40" + b"a" * 64 + b"\x03adv\x04test\x00\x00\x01\x00\x01"
    long_name = (
        header(0x0106)
        + b"".join(b"\x3f" + b"a" * 63 for _ in range(4))
        + b"\x03adv\x04test\x00\x00\x01\x00\x01"
    )
    nul = header(0x0107) + b"\x09evil.com\x00\x03adv\x04test\x00\x00\x01\x00\x01"  # one label "evil.com\0"
    dotted = header(0x0108) + b"\x08evil.com\x03adv\x04test\x00\x00\x01\x00\x01"  # one label with dots
    dotted_suffix = header(0x0109) + b"\x04evil\x08adv.test\x00\x00\x01\x00\x01"  # "adv.test" as one label
    notify = header(0x010A, flags=0x2000) + q("target.adv.test")[12:]
    chaos = dnslib.DNSRecord.question("version.bind", "TXT", "CH")
    chaos.header.id = 0x010B
    response = header(0x010C, flags=0x8180) + q("target.adv.test")[12:]
    truncated = q("target.adv.test", ident=0x010D)[:20]
    bad_edns = (
        header(0x010E, ar=1) + q("target.adv.test")[12:] + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x40"
    )
    cases = {
        "pointer to itself": (pointer_to_itself, 0x0101, 1),
        "label then pointer loop": (label_then_loop, 0x0102, 1),
        "two questions": (bytes(two.pack()), 0x0103, 1),
        "zero questions": (zero, 0x0104, 1),
        "64-octet label": (long_label, 0x0105, 1),
        "name over 255 octets": (long_name, 0x0106, 1),
        "NUL in a label": (nul, 0x0107, 5),
        "dots in a label": (dotted, 0x0108, 5),
        "allowed suffix as one label": (dotted_suffix, 0x0109, 5),
        "opcode NOTIFY": (notify, 0x010A, 5),
        "class CHAOS": (bytes(chaos.pack()), 0x010B, 5),
        "truncated question": (truncated, 0x010D, 1),
    }
    ops = [("udp", message) for message, _, _ in cases.values()]
    ops += [("udp", response), ("udp", bad_edns), ("udp", q("target.adv.test", ident=0x0110))]
    got = raw(lab, server, ops)
    for (case, (_, ident, want)), reply in zip(cases.items(), got, strict=False):
        assert rcode(reply) == (ident, 1, want), (case, reply)
    assert got[len(cases)] is None  # a response is never answered (no reflection)
    edns = rcode(got[len(cases) + 1])  # forwarded: dnsmasq's own verdict, the client's ID
    assert edns is not None and edns[:2] == (0x010E, 1), got[len(cases) + 1]
    ok = dnslib.DNSRecord.parse(bytes.fromhex(got[-1]))
    assert ok.header.rcode == 0 and [str(rr.rdata) for rr in ok.rr] == [world(lab, "target")]


def test_tcp_stream_with_several_queries_and_a_bad_length(lab: Lab) -> None:
    """Attack: one TCP connection carrying an allowed query, a refused one, a malformed one, a lying
    length prefix (shorter: the rest is parsed as the next frame), and a last frame that claims 500
    bytes and brings 10. Targets: the proxy's TCP framing. Expected: one correct reply per complete
    frame (matched by ID), the incomplete one ignored, the connection closed, the next query served.
    Precedents: cilium/cilium#31197 "Cilium fqdn/dnsproxy fails with FQDN dns policy when DNS response
    is truncated" (TCP fallback through the proxy); RFC 7766 (DNS over TCP: pipelining, framing)."""
    allowed = q("target.adv.test", ident=0x0201)
    refused = q("evil.test", ident=0x0202)
    two = dnslib.DNSRecord.question("a.adv.test")
    two.add_question(dnslib.DNSQuestion("b.adv.test"))
    two.header.id = 0x0203
    short = (len(allowed) - 4).to_bytes(2, "big") + allowed  # a 4-byte tail becomes the next "frame"
    stream = frame(allowed) + frame(refused) + frame(bytes(two.pack())) + short
    stream += (500).to_bytes(2, "big") + b"x" * 10
    [replies] = raw(lab, kube_dns(lab), [("tcp", stream)])
    got = sorted(rcode(r) for r in replies)  # type: ignore[type-var]
    # allowed NOERROR, refused REFUSED, two questions FORMERR, the cut-short allowed query FORMERR
    # (its question runs past its frame); the 4-byte tail is shorter than a header: no reply
    assert got == [(0x0201, 1, 0), (0x0201, 1, 1), (0x0202, 1, 5), (0x0203, 1, 1)], replies
    rc, out = dig(lab, PROBE, "+tcp", "+short", "target.adv.test")
    assert rc == 0 and out.split() == [world(lab, "target")], out


def test_hostile_server_answers(lab: Lab) -> None:
    """Attack: an allowed server (hostile-dns) answers allowed names with TTL 0, with TTL 2^32-1, with a
    CNAME to a name the policy does not allow, or with a compression loop. Targets: ``toFQDNs``
    ``*.adv.test``. Expected: TTL 0 and 2^32-1 (read as 0, RFC 2181 §8) still allow the first
    connection (the IP is in the ipcache before the answer is released); a CNAME chain's address is
    credited to the name asked, never to the CNAME target's name (``bystander.test`` itself stays not
    allowed); a looping answer is SERVFAIL and credits nothing. Precedents: cilium/cilium#30588 "FQDN
    Policies ignore CNAMEs returned during lookup"; cilium/cilium#39926 "dnsproxy: don't verify names
    of answers" (the server is trusted, only the question must match); RFC 2181 §8 (TTL top bit)."""
    server = hostile(lab)
    target, bystander = world(lab, "target"), world(lab, "bystander")
    for name in ("ttl0.adv.test", "ttlmax.adv.test"):
        rc, out = dig(lab, PROBE, f"@{server}", "+short", name)
        assert rc == 0 and out.split() == [target], (name, out)
        assert curl(lab, PROBE, f"http://{target}/") == 0, name  # right after the answer
    # a CNAME out of the allowed names: the address is credited to the name asked
    rc, out = dig(lab, PROBE, f"@{server}", "cname-out.adv.test")
    assert status_of(out) == "NOERROR" and "bystander.test." in out and bystander in out, out
    assert curl(lab, PROBE, f"http://{bystander}/") == 0  # allowed as cname-out.adv.test (Cilium too)
    rc, out = dig(lab, PROBE, f"@{server}", "bystander.test")  # the name itself is not allowed
    assert status_of(out) == "REFUSED", out
    # a compression loop in the answer: SERVFAIL, and the next answer still works
    rc, out = dig(lab, PROBE, f"@{server}", "loop.adv.test")
    assert status_of(out) == "SERVFAIL", out
    rc, out = dig(lab, PROBE, f"@{server}", "+short", "plain.adv.test")
    assert out.split() == [target], out


def test_dns_to_another_port_or_server_is_not_a_bypass(lab: Lab) -> None:
    """Attack: send DNS where the DNS rule does not look — kube-dns on another port, a world host on
    53 — to resolve a name ``rules.dns`` refuses, or to carry data out. Expected: dropped at L3/L4 (no
    answer); the allowed path still REFUSES the name. Precedent: cilium/cilium#11767 "DNS egress
    defaults-closed, but other egress default-open" (only the ports with ``rules.dns`` go through the
    proxy; everything else must be denied by L3/L4)."""
    rc, out = dig(lab, PROBE, "-p", "5353", f"@{kube_dns(lab)}", "evil.test")
    assert rc == DIG_NO_SERVER, out
    rc, out = dig(lab, PROBE, f"@{world(lab, 'bystander')}", "evil.test")
    assert rc == DIG_NO_SERVER, out
    rc, out = dig(lab, PROBE, "+tcp", f"@{world(lab, 'bystander')}", "evil.test")
    assert rc == DIG_NO_SERVER, out
    rc, out = dig(lab, PROBE, "evil.test")
    assert status_of(out) == "REFUSED", out
    assert curl(lab, PROBE, f"http://{world(lab, 'google')}/") == CURL_TIMEOUT  # never resolved
