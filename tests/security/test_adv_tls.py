"""Adversarial TLS suite (serverNames and TLS interception) through a real Envoy.

Topology: the namespaces of ``test_http_findings.py`` (its builder and xDS harness reused; our own prefix
``l7gat-``), with two more transparent proxy ports in the router namespace::

    client ──► router: nft tproxy tcp/443 → 15002 (serverNames only: the TLS bytes pass through)
                             tcp/8443 → 15003 (serverNames + terminatingTLS + originatingTLS + HTTP rules)
           ──► backend 10.215.2.2: ``adv_tls_backend.py``, one address serving ``api.example.com`` and
               ``evil.example.net`` (the default certificate: what a ClientHello without a known name gets)

The policy under attack allows ``api.example.com`` and ``*.ok.test`` on 443, and ``api.example.com`` with
``GET /public(/.*)?`` on 8443. The backend logs every TCP connection it accepts *before* reading a byte,
so the oracle of a refused ClientHello is exact: Envoy never opened a connection to the server. The
ClientHellos are real ones (``tls_hello.py``) with the SNI changed on the wire.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_http_findings import BACKEND, _build_namespaces
from tls_hello import ECH, PADDING, SERVER_NAME, Hello, real_hello

from l7 import procs
from l7.lab import certs
from l7.policy.model import HTTPRule
from l7xds import resources as rt
from l7xds import tls as tl
from l7xds.snapshot import subset_version
from l7xds.translate import ProxySettings, RuleSet, Translator
from tests.xds.envoy_harness import poll, sh, start_xds_envoy

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
NODE = "l7gat-node"
SNI_PORT, TERM_PORT = 15002, 15003
API, EVIL = "api.example.com", "evil.example.net"
SNI_TLS = tl.PortTLS(server_names=(API, "*.ok.test"))
INTERCEPT, UPSTREAM_CA = tl.TLSRef("default", "intercept"), tl.TLSRef("default", "upstream-ca")
TERM_TLS = tl.PortTLS(server_names=(API,), terminating=INTERCEPT, originating=UPSTREAM_CA)
TERM_RULES: RuleSet = (
    HTTPRule(method="GET", path="/public(/.*)?"),
    HTTPRule(method="GET", path="/key", headers=("X-Key: abc",)),
)
DENIED = [403, "Access denied\r\n"]


@dataclass
class TLSLab:
    client: str
    log: Path
    ca: Path

    def seen(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def accepted(self) -> int:
        return sum(1 for e in self.seen() if e["event"] == "accept")

    def requests(self) -> list[dict[str, Any]]:
        return [e for e in self.seen() if e["event"] == "request"]

    def reset(self) -> None:
        self.log.write_text("")

    def _run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        argv = ["nsenter", f"--net=/run/netns/{self.client}", sys.executable, str(HERE / "adv_tls_client.py")]
        proc = subprocess.run(
            argv, input=json.dumps(cmd), capture_output=True, text=True, timeout=30, check=False
        )
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def raw(self, *chunks: bytes, port: int = 443, idle: float = 0.5) -> tuple[bytes, bool]:
        """Send ``chunks`` (each its own TCP segment) to the backend's ``port``; what came back, closed."""
        out = self._run(
            {
                "mode": "raw",
                "host": BACKEND,
                "port": port,
                "chunks": [base64.b64encode(c).decode() for c in chunks],
                "idle": idle,
            }
        )
        return base64.b64decode(out["data"]), bool(out["closed"])

    def tls(self, sni: str | None, *requests: str, port: int = 443, **extra: Any) -> dict[str, Any]:
        cmd = {"mode": "tls", "host": BACKEND, "port": port, "sni": sni, "cafile": str(self.ca)}
        return self._run({**cmd, "requests": list(requests), **extra})


def get(path: str, *headers: str, host: str = API) -> str:
    return "\r\n".join([f"GET {path} HTTP/1.1", f"Host: {host}", *headers]) + "\r\n\r\n"


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSLab]:
    prefix = f"l7gat-{secrets.token_hex(3)}"
    client, router, backend = f"{prefix}-c", f"{prefix}-r", f"{prefix}-b"
    work = tmp_path_factory.mktemp("l7gat-envoy")
    pki = work / "pki"
    ca = certs.authority(pki, "ca")
    certs.issue(pki, "api", ca, [API])
    certs.issue(pki, "evil", ca, [EVIL])
    intercept = certs.issue(pki, "intercept", ca, [API, EVIL])
    with contextlib.ExitStack() as cleanup:
        for ns in (backend, router, client):
            cleanup.callback(sh, "ip", "netns", "delete", ns, check=False)
        _build_namespaces(client, router, backend)
        ruleset = f"""
table ip l7gat {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        tcp dport 443 meta mark set 0x1 tproxy to :{SNI_PORT} accept
        tcp dport 8443 meta mark set 0x1 tproxy to :{TERM_PORT} accept
    }}
}}
"""
        subprocess.run(
            ["nsenter", f"--net=/run/netns/{router}", "nft", "-f", "-"], input=ruleset, text=True, check=True
        )
        ready, log = work / "backend.ready", work / "backend.log"
        serve = ["nsenter", f"--net=/run/netns/{backend}", sys.executable, str(HERE / "adv_tls_backend.py")]
        backend_proc = procs.spawn(
            [*serve, str(ready), str(log), str(pki)], stdout=work / "backend.out", stderr="stdout"
        )
        cleanup.callback(backend_proc.stop)
        poll("the backend", ready.exists)

        x = start_xds_envoy(cleanup, work, NODE, router)
        tls_secrets = {
            ("default", "intercept"): {
                "tls.crt": intercept[0].read_text(),
                "tls.key": intercept[1].read_text(),
            },
            ("default", "upstream-ca"): {"ca.crt": ca[0].read_text()},
        }
        settings = ProxySettings(upstream_mark=0xA00, ipv6=False, tls_secrets=tls_secrets)
        snapshot = Translator().snapshot(
            {SNI_PORT: (), TERM_PORT: TERM_RULES}, settings, tls={SNI_PORT: SNI_TLS, TERM_PORT: TERM_TLS}
        )

        async def publish() -> None:
            x.cache.set_snapshot(NODE, snapshot)

        x.loop.run(publish())
        version = subset_version(snapshot.resources(rt.LISTENER).values())
        poll("the listeners' ACK", lambda: x.stats.acked.get((NODE, rt.LISTENER)) == version)
        x.envoy.wait_ready(x.admin)
        lab = TLSLab(client, log, ca[0])
        poll("the TLS listeners", lambda: lab.tls(API, get("/"))["handshake"], timeout=15)
        yield lab


@pytest.fixture
def lab(tls_lab: TLSLab) -> Iterator[TLSLab]:
    """An empty backend log; afterwards an allowed name must still work on a fresh connection."""
    tls_lab.reset()
    yield tls_lab
    out = tls_lab.tls(API, get("/public/ok"), port=8443)
    assert out["responses"] and out["responses"][0][0] == 200, out


def forwarded(lab: TLSLab, *chunks: bytes) -> bool:
    """Whether Envoy opened a connection to the server for these bytes on the serverNames port."""
    lab.raw(*chunks)
    return lab.accepted() > 0


# --- serverNames: what a real client gets ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_real_clients_allowed_name_and_refused_names(lab: TLSLab, version: str) -> None:
    """A listed name reaches its server over TLS 1.2 and 1.3; an unlisted one, a name under or around the
    listed one, and no SNI at all never reach it (the server would serve its default virtual host)."""
    out = lab.tls(API, get("/x"), version=version)
    assert out["responses"] and out["responses"][0][0] == 200, out
    assert json.loads(out["responses"][0][1])["sni"] == API
    lab.reset()
    for sni in (EVIL, None, f"{API}.{EVIL}", f"x{API}", f"x.{API}", "ok.test", "a.b.ok.test"):
        out = lab.tls(sni, get("/x"), version=version)
        assert not out["handshake"], (sni, out)
    assert lab.accepted() == 0, lab.seen()


# --- serverNames: ClientHellos no library sends -----------------------------------------------------------


def test_split_client_hello_is_read_whole(lab: TLSLab) -> None:
    """Cilium/Envoy issue class: an SNI filter that reads only the first segment or record. A ClientHello
    split across TCP segments (1 byte, then the rest), across 64-byte TLS records, or both, is reassembled
    by the inspector: an unlisted name is refused, a listed one forwarded (not a failure to parse)."""
    for name, allowed in ((EVIL, False), (API, True)):
        hello = Hello.parse(real_hello(name))
        whole = hello.records()
        records = hello.records(64)
        for chunks in (
            [whole[:1], whole[1:]],
            [records],
            [*(records[i : i + 7] for i in range(0, 140, 7)), records[140:]],  # 20 tiny segments, the rest
        ):
            lab.reset()
            assert forwarded(lab, *chunks) is allowed, (name, [len(c) for c in chunks])


@pytest.mark.parametrize(
    "name",
    [
        "API.Example.COM",  # case: the same name (RFC 6066: compared case-insensitively)
        "api.example.com.",  # a trailing dot: the same name, by design
        "x.OK.test",
        "x" * 64 + ".ok.test",  # a 64-octet label: not a DNS name, but a name under '*.ok.test' all the same
    ],
)
def test_case_and_trailing_dot_are_the_same_name(lab: TLSLab, name: str) -> None:
    """By design: case and one trailing dot do not change a DNS name, for the filter as for the server."""
    assert forwarded(lab, Hello.parse(real_hello(API)).with_names(name.encode()).records())


@pytest.mark.parametrize(
    "name",
    [
        "api.example.co\u212a",  # KELVIN SIGN: RE2 (?i) folds it to 'k'
        "api.example.com\u017f",  # LONG S after the name
        "\u017f.ok.test",  # LONG S folds to 's': a '*' label with a non-ASCII letter
        "x.o\u212a.test",
        "xn--pi-7ka.example.com".upper().replace("XN--", "xn--"),  # punycode of another label: another name
        "\u0430pi.example.com",  # Cyrillic a (IDN homograph, a U-label sent raw)
        "api.example.com\x00.evil.example.net",  # NUL inside
        "api.example.com..",
        ".api.example.com",
        "api.example.com:443",
        "api.example.com/",
        "api.example.com ",
    ],
)
def test_non_ascii_and_odd_names_are_refused(lab: TLSLab, name: str) -> None:
    """Precedent: Unicode case folding in matchers (CVE-2019-9636 class; Go's and RE2's ``(?i)`` fold
    U+212A to 'k' and U+017F to 's'). An SNI must be the listed ASCII name exactly (case aside); any other
    byte sequence — non-ASCII, IDN U-labels, NUL, ports, slashes, empty labels — is refused: the server
    would not recognise the name and would answer with its default virtual host."""
    hello = Hello.parse(real_hello(API)).with_names(name.encode("utf-8"))
    assert not forwarded(lab, hello.records()), name


def test_overlong_names_are_refused(lab: TLSLab) -> None:
    """A name over 255 octets (and a 64-octet label) under a listed ``*`` pattern: refused."""
    for name in ("x" * 250 + ".ok.test", "x" * 10000 + ".ok.test"):
        hello = Hello.parse(real_hello(API)).with_names(name.encode())
        assert not forwarded(lab, hello.records()), len(name)


def test_two_names_or_two_extensions_are_refused(lab: TLSLab) -> None:
    """Parser differential: two host_name entries in one server_name list (either order), two server_name
    extensions, a name of another name_type, an empty list. Envoy's inspector (BoringSSL) and the server
    might pick different entries; every such hello must be refused."""
    base = Hello.parse(real_hello(API))
    api, evil = API.encode(), EVIL.encode()
    hellos = [
        base.with_names(api, evil),
        base.with_names(evil, api),
        base.with_names(evil).with_extension(SERVER_NAME, base.with_names(api).extensions[0][1]),
        base.with_names(api).with_extension(SERVER_NAME, base.with_names(evil).extensions[0][1], first=False),
        base.with_names(api, name_type=1),
        base.without(SERVER_NAME).with_extension(SERVER_NAME, b"\x00\x00"),
    ]
    for i, hello in enumerate(hellos):
        assert not forwarded(lab, hello.records()), i


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        b"CONNECT evil.example.net:443 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        # SSLv2-style ClientHello (no SNI possible)
        bytes.fromhex("802e0103010015000000100100800300800700c0060040040080020080") + b"\x11" * 16,
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a handshake record with a broken hello
        b"\x16\x03\x01\xff\xff" + b"\x00" * 64,  # a record announcing 64 KiB, then stalls
        b"\x00" * 32,
        bytes(range(256)),
    ],
    ids=["http", "connect", "sslv2", "broken-hello", "long-record", "zeros", "garbage"],
)
def test_not_tls_is_refused(lab: TLSLab, payload: bytes) -> None:
    """Plaintext HTTP (with a listed Host), CONNECT, an SSLv2 hello, garbage: refused, nothing forwarded."""
    assert not forwarded(lab, payload), payload[:16]


def test_huge_client_hello(lab: TLSLab) -> None:
    """A ClientHello over the inspector's read limit (a 20 KiB padding extension): with a listed name it
    may pass or not, with an unlisted one it never does (no fail-open on 'too large')."""
    for name, may_pass in ((EVIL, False), (API, True)):
        hello = (
            Hello.parse(real_hello(name))
            .without(PADDING)
            .with_extension(PADDING, b"\x00" * 20000, first=False)
        )
        lab.reset()
        assert forwarded(lab, hello.records()) in ((False, True) if may_pass else (False,)), name


def test_ech_like_extensions_do_not_replace_the_sni(lab: TLSLab) -> None:
    """An ECH (0xfe0d) or draft-ESNI (0xffce) extension is opaque to the filter: without a listed
    ``server_name`` it is refused; with a listed outer name it is forwarded (ECH hides the real name:
    the documented limit)."""
    base = Hello.parse(real_hello(API))
    blob = b"\x00" + b"\x00\x01\x00\x01" + b"\x07" + b"\x00\x20" + b"\x11" * 32 + b"\x00\x40" + b"\x22" * 64
    assert not forwarded(lab, base.without(SERVER_NAME).with_extension(ECH, blob).records())
    assert not forwarded(lab, base.without(SERVER_NAME).with_extension(0xFFCE, blob).records())
    assert forwarded(lab, base.with_extension(ECH, blob, first=False).records())


@pytest.mark.parametrize("alpn", [("h2",), ("http/1.1", "h2"), ("x" * 200,), ("acme-tls/1",)])
def test_alpn_does_not_change_the_decision(lab: TLSLab, alpn: tuple[str, ...]) -> None:
    """ALPN values are not names: an unlisted SNI stays refused whatever is offered."""
    assert not forwarded(lab, real_hello(EVIL, alpn=alpn))
    assert forwarded(lab, real_hello(API, alpn=alpn))


def test_resumed_session_with_another_sni_is_refused(lab: TLSLab) -> None:
    """A session ticket from a connection to the listed name, presented with another SNI: the filter reads
    every ClientHello, so the new name is refused before the ticket matters."""
    out = lab.tls(API, get("/x"), resume_with=EVIL, version="1.2")
    assert out["responses"] and out["responses"][0][0] == 200, out
    assert out["resumed"] is not None and not out["resumed"]["handshake"], out


# --- TLS interception: HTTP rules over TLS ----------------------------------------------------------------


def intercepted(lab: TLSLab, *requests: str, sni: str = API, **extra: Any) -> list[list[Any]]:
    out = lab.tls(sni, *requests, port=8443, **extra)
    assert out["handshake"], out
    responses: list[list[Any]] = out["responses"]
    return responses


@pytest.mark.parametrize(
    ("path", "seen"),
    [
        ("/public/a", "/public/a"),
        ("/public/../private", None),
        ("/public/%2e%2e/private", None),
        ("/public/..%2fprivate", None),
        ("/public/..;x/private", None),
        ("/public/..%3Bx/private", None),
        ("/public//../private", "/public/private"),
        ("/private", None),
    ],
)
def test_path_tricks_over_tls_are_the_plaintext_ones(lab: TLSLab, path: str, seen: str | None) -> None:
    """``test_adv_http.py``'s path cases over an intercepted port: denied with the policy's 403, or
    forwarded in the normalised form that was checked (the backend sees exactly that path)."""
    (response,) = intercepted(lab, get(path))
    if seen is None:
        assert response == DENIED, response
        assert lab.requests() == []
    else:
        assert response[0] == 200, response
        assert [r["path"] for r in lab.requests()] == [seen]


def test_repeated_header_over_tls(lab: TLSLab) -> None:
    """Finding 1 of issue 11 over TLS: a repeated header never satisfies an exact value (HTTP/1.1 over
    an intercepted port); the single exact value does."""
    assert intercepted(lab, get("/key", "X-Key: evil", "X-Key: abc")) == [DENIED]
    assert intercepted(lab, get("/key", "X-Key: abc", "X-Key: abc")) == [DENIED]
    assert intercepted(lab, get("/key", "X-Key: abc"))[0][0] == 200


def test_h2_offered_over_tls_gets_http1(lab: TLSLab) -> None:
    """The interception listener offers h2 and http/1.1: a client that offers h2 gets h2 (the same rules
    over HTTP/2: tests/tls/test_tls_lab.py, curl --http2); one that offers only http/1.1 speaks HTTP/1.1
    and gets the same rules."""
    out = lab.tls(API, port=8443, alpn=["h2", "http/1.1"])
    assert out["handshake"] and out["alpn"] == "h2", out
    out = lab.tls(API, get("/private"), get("/public/x"), port=8443, alpn=["http/1.1"])
    assert out["alpn"] == "http/1.1", out
    assert out["responses"][0] == DENIED and out["responses"][1][0] == 200, out


@pytest.mark.parametrize("host", [EVIL, "evil.example.net:8443", "other.example.org", f"{API}.{EVIL}"])
def test_host_other_than_the_listed_names_is_refused(lab: TLSLab, host: str) -> None:
    """Domain fronting through the interception: the SNI is the listed name, the request's Host another
    name on the same address. Envoy originates TLS with the *Host* as upstream SNI (auto_sni), so without
    a check the request reaches the other name's virtual host under rules that name no host. On a port
    with serverNames the Host must be one of them (403 otherwise; Cilium forwards it with the client's
    SNI and leaves the choice to the server)."""
    assert intercepted(lab, get("/public/x", host=host)) == [DENIED]
    assert lab.requests() == []


@pytest.mark.parametrize("host", [API, f"{API}:8443", "API.Example.com"])
def test_host_that_is_a_listed_name_is_served(lab: TLSLab, host: str) -> None:
    (response,) = intercepted(lab, get("/public/x", host=host))
    assert response[0] == 200, response
    assert [r["sni"] for r in lab.requests()] == [API]  # Envoy sends the host in lower case


@pytest.mark.parametrize("host", [f"{API}.", "api.example.co\u212a"])
def test_host_variants_fail_upstream_verification(lab: TLSLab, host: str) -> None:
    """A trailing dot, or a non-ASCII letter that RE2's ``(?i)`` folds to an ASCII one (KELVIN SIGN):
    the host check lets them through, but the upstream SNI is that host and the server's certificate does
    not name it (auto_san_validation): 503, nothing served. Fail closed, by Envoy's verification."""
    (response,) = intercepted(lab, get("/public/x", host=host.encode().decode("unicode_escape")))
    assert response[0] in (400, 403, 503), response
    assert lab.requests() == []


def test_sni_refused_on_the_interception_port(lab: TLSLab) -> None:
    """The interception listener checks the SNI before it terminates: an unlisted SNI gets no handshake."""
    out = lab.tls(EVIL, get("/public/x"), port=8443)
    assert not out["handshake"], out
    assert lab.accepted() == 0
