"""Adversarial HTTP suite (issue 11, HTTP class): smuggling, request targets, Host/authority, h2c,
CONNECT, methods, header tricks, limits, fragments, NUL and slashes, through a real Envoy.

Topology: the one of ``test_http_findings.py`` (its namespace builder, xDS loop and ``Lab`` are reused),
with our own namespaces (prefix ``l7gah-``) and our own backend (``adv_http_backend.py``) that answers with
the method, path, Host, ``X-Key``, ``Upgrade`` and body it received and appends the same JSON line to a
log: a request smuggled past Envoy would show up in that log. Every hostile request is followed by a
legitimate request on a fresh connection (``healthy``).

Oracle of every case: the request is denied (403 ``Access denied``, or another 4xx, or the connection is
closed without a 2xx), or it is allowed and the backend received exactly what was checked. Never: a 2xx
for a path, method, host or header value the policy does not allow, nor a request in the backend's log
that Envoy did not check.
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
from test_http_findings import (
    BACKEND,
    DENIED,
    NODE,
    Exchange,
    Lab,
    _build_namespaces,
)

from l7 import procs
from l7.policy.model import HeaderMatch, HTTPRule
from l7xds.translate import ProxySettings, RuleSet, Translator
from tests.xds.envoy_harness import poll, sh, start_xds_envoy

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
GOOD = "good.test"
RULES: RuleSet = (
    HTTPRule(method="GET", path="/public(/.*)?"),
    HTTPRule(method="POST", path="/upload"),
    HTTPRule(method="GET", path="/host", host=r"good\.test"),
    # Cilium's `headers` is an exact value: "a.*" is the literal value, not a regex.
    HTTPRule(method="GET", path="/key", headers=("X-Key: a.*",)),
    HTTPRule(method="GET", path="/value", header_matches=(HeaderMatch(name="X-Key", value="abc"),)),
)


@dataclass
class AdvLab:
    lab: Lab
    log: Path

    def seen(self) -> list[dict[str, Any]]:
        """Every request the backend received so far."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def paths_seen(self) -> list[str]:
        return [entry["path"] for entry in self.seen()]

    def reset(self) -> None:
        self.log.write_text("")

    def send(self, payload: bytes, idle: float = 1.0) -> Exchange:
        return self.lab.send(payload, idle=idle)

    def h2(self, headers: list[tuple[str, str]]) -> dict[str, Any]:
        proc = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.lab.client}",
                sys.executable,
                str(HERE / "adv_h2client.py"),
                BACKEND,
                "80",
            ],
            input=json.dumps(headers).encode(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result


@pytest.fixture(scope="module")
def adv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdvLab]:
    prefix = f"l7gah-{secrets.token_hex(3)}"
    client, router, backend = f"{prefix}-c", f"{prefix}-r", f"{prefix}-b"
    work = tmp_path_factory.mktemp("l7gah-envoy")
    with contextlib.ExitStack() as cleanup:
        for ns in (backend, router, client):
            cleanup.callback(sh, "ip", "netns", "delete", ns, check=False)
        _build_namespaces(client, router, backend)

        ready, log = work / "backend.ready", work / "backend.log"
        serve = ["nsenter", f"--net=/run/netns/{backend}", sys.executable, str(HERE / "adv_http_backend.py")]
        out = work / "backend.out"
        backend_proc = procs.spawn([*serve, str(ready), str(log)], stdout=out, stderr="stdout")
        cleanup.callback(backend_proc.stop)
        poll("the backend", ready.exists)

        x = start_xds_envoy(cleanup, work, NODE, router)
        settings = ProxySettings(upstream_mark=0xA00, ipv6=False)
        lab = Lab(client, x.loop, x.cache, x.stats, Translator(), settings, x.envoy, x.admin)
        lab.apply(RULES)
        x.envoy.wait_ready(x.admin)
        yield AdvLab(lab, log)


@pytest.fixture
def lab(adv: AdvLab) -> Iterator[AdvLab]:
    """The lab with an empty backend log; after the test, a legitimate request on a fresh connection
    must still work (nothing a hostile request did may break the next client)."""
    adv.reset()
    yield adv
    healthy(adv)


def req(
    target: str, *headers: str, method: str = "GET", host: str | None = BACKEND, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def close(payload: bytes) -> bytes:
    """``payload`` (one request head, maybe a body) with ``Connection: close`` added to its head."""
    head, sep, body = payload.partition(b"\r\n\r\n")
    return head + b"\r\nConnection: close" + sep + body


def statuses(exchange: Exchange) -> list[int]:
    return [r.status for r in exchange.responses]


def echo(body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(body)
    return result


def healthy(adv: AdvLab) -> None:
    exchange = adv.send(close(req("/public/ok")), idle=5)
    assert [(r.status, echo(r.body)["path"]) for r in exchange.responses] == [(200, "/public/ok")]


def refused(exchange: Exchange) -> bool:
    """Denied: no 2xx at all, and at least a 4xx or a closed connection."""
    codes = statuses(exchange)
    return all(not 200 <= c < 300 for c in codes) and (any(400 <= c < 500 for c in codes) or exchange.closed)


def test_lab_sanity(lab: AdvLab) -> None:
    exchange = lab.send(close(req("/public")))
    assert echo(exchange.responses[0].body)["path"] == "/public"
    exchange = lab.send(close(req("/private")))
    assert [(r.status, r.body) for r in exchange.responses] == [DENIED]
    assert lab.paths_seen() == ["/public"]


DENY = "deny"  # exactly 403 `Access denied`, nothing reached the backend
REJECT = "reject"  # another 4xx or a closed connection, no 2xx, nothing reached the backend


def check(lab: AdvLab, exchange: Exchange, want: str | dict[str, Any]) -> None:
    """``want``: DENY, REJECT, or the fields the backend must have received (one request, 200)."""
    if want == DENY:
        assert [(r.status, r.body) for r in exchange.responses] == [DENIED], exchange
        assert lab.seen() == []
    elif want == REJECT:
        assert refused(exchange), exchange
        assert lab.seen() == []
    else:
        assert isinstance(want, dict)
        assert statuses(exchange) == [200], exchange
        (seen,) = lab.seen()
        assert echo(exchange.responses[0].body) == seen  # the answer is the backend's
        assert {k: seen[k] for k in want} == want, seen


# --- request smuggling ----------------------------------------------------------------------------------

SMUGGLED = b"GET /private HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED = b"0\r\n\r\n" + SMUGGLED  # an empty chunked body followed by a request for a denied path


def upload(*headers: str, body: bytes = CHUNKED) -> bytes:
    return req("/upload", *headers, method="POST", body=body)


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        # CL.TE: the front end reads Content-Length (the whole payload), the backend reads chunked and
        # sees GET /private as a second request. Envoy refuses TE+CL (envoyproxy/envoy#9316
        # "http: disallow unknown transfer encodings"; #11398/#12349: allow_chunked_length stays off).
        pytest.param(
            upload(f"Content-Length: {len(CHUNKED)}", "Transfer-Encoding: chunked"), [400], id="CL.TE"
        ),
        # TE.CL: the same two headers in the other order, with a short Content-Length.
        pytest.param(upload("Transfer-Encoding: chunked", "Content-Length: 3"), [400], id="TE.CL"),
        # TE.TE, obfuscated Transfer-Encoding so that one hop ignores it and falls back to Content-Length
        # (PortSwigger's TE.TE list; sozu-proxy/sozu#726 "Handling of content-length/transfer-encoding
        # allows request smuggling": a trailing tab made sozu and gunicorn disagree).
        pytest.param(
            upload("Transfer-Encoding: xchunked", f"Content-Length: {len(CHUNKED)}"), [400], id="TE-xchunked"
        ),
        pytest.param(
            upload("Transfer-Encoding : chunked", "Content-Length: 0"), [400], id="TE-space-before-colon"
        ),
        pytest.param(
            upload("Transfer-Encoding:", " chunked", f"Content-Length: {len(CHUNKED)}"),
            [400],
            id="TE-obs-fold",
        ),
        pytest.param(
            upload("Transfer-Encoding: \x0bchunked", f"Content-Length: {len(CHUNKED)}"), [400], id="TE-vtab"
        ),
        pytest.param(upload("Transfer-Encoding: chunked, identity"), [501], id="TE-chunked-identity"),
        pytest.param(upload("Transfer-Encoding: identity, chunked"), [501], id="TE-identity-chunked"),
        pytest.param(upload("Transfer-Encoding: chunked", "Transfer-Encoding: x"), [501], id="TE-twice"),
        # Duplicate Content-Length, different or equal, and a list or a sign (RFC 9112 6.3: MUST reject).
        pytest.param(
            upload("Content-Length: 0", f"Content-Length: {len(SMUGGLED)}", body=SMUGGLED),
            [400],
            id="CL-twice-different",
        ),
        pytest.param(
            upload("Content-Length: 5", "Content-Length: 5", body=b"hello"), [400], id="CL-twice-same"
        ),
        pytest.param(upload("Content-Length: 5, 5", body=b"hello"), [400], id="CL-list"),
        pytest.param(upload("Content-Length: +5", body=b"hello"), [400], id="CL-plus-sign"),
    ],
)
def test_smuggling_with_ambiguous_framing_is_refused(lab: AdvLab, payload: bytes, want: list[int]) -> None:
    """Attack: a POST to an allowed path (`/upload`) whose framing two parsers read differently, carrying
    `GET /private` (denied) as the "next" request. Expected: Envoy refuses the message (400/501) and
    closes the connection; the backend never receives `/private` (nor the POST)."""
    exchange = lab.send(payload, idle=2)
    assert statuses(exchange) == want and exchange.closed, exchange
    assert lab.seen() == []


@pytest.mark.parametrize(
    "te",
    [
        "Transfer-Encoding:\tchunked",  # envoyproxy/envoy#15244 "http: adding another smuggling test" (tab)
        "Transfer-Encoding: CHUNKED",
        "Transfer-Encoding: chunked ",
    ],
    ids=["tab", "upper-case", "trailing-space"],
)
def test_smuggling_with_tolerated_te_spellings_is_one_consistent_parse(lab: AdvLab, te: str) -> None:
    """Attack: TE.TE with spellings Envoy accepts as `chunked` (tab as OWS, case, trailing OWS). Expected:
    the body is the empty chunked body, and the request after it is a *second request that Envoy checks
    itself*: 200 for the POST, 403 `Access denied` for `GET /private`; the backend receives the POST with an
    empty body and never `/private`. Precedent: envoyproxy/envoy#15244, sozu-proxy/sozu#726."""
    exchange = lab.send(upload(te), idle=1)
    assert [r.status for r in exchange.responses] == [200, 403]
    assert exchange.responses[1].body == DENIED[1]
    assert [(s["method"], s["path"], s["body"]) for s in lab.seen()] == [("POST", "/upload", "")]


def test_chunked_body_with_bare_lf_lines_is_refused(lab: AdvLab) -> None:
    """Attack: chunk-size lines ended by a bare LF (parsers disagree on them; the smuggled request hides
    after `0\\n\\n`). Expected: 400 and the connection closed; Envoy may have started the POST to the
    allowed `/upload` upstream before it met the bad chunk, but `/private` never reaches the backend.
    Precedent: PortSwigger "HTTP request smuggling" (chunk line terminators), envoyproxy/envoy#9316."""
    exchange = lab.send(upload("Transfer-Encoding: chunked", body=b"5\nhello\n0\n\n" + SMUGGLED), idle=2)
    assert statuses(exchange) == [400] and exchange.closed
    assert "/private" not in lab.paths_seen()


def test_get_with_a_body_carries_the_body_not_a_second_request(lab: AdvLab) -> None:
    """Attack: `GET /public` with a Content-Length body that is a request for `/private` (CL on GET: a
    hop that ignores bodies on GET would read the body as the next request). Expected: allowed; the
    backend receives one GET /public whose body is those bytes, and no request for `/private`.
    Precedent: PortSwigger "CL.0" / "GET with body" desync research; RFC 9110 9.3.1."""
    exchange = lab.send(close(req("/public", f"Content-Length: {len(SMUGGLED)}", body=SMUGGLED)))
    check(lab, exchange, {"method": "GET", "path": "/public", "body": SMUGGLED.decode()})


# --- request target and Host / :authority ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        # Absolute-form targets: the path inside the URI is what is checked and forwarded (origin-form).
        (req(f"http://{BACKEND}/private"), DENY),
        (req(f"http://{BACKEND}/public"), {"path": "/public", "host": [BACKEND]}),
        # Host vs absolute URI: the URI's authority wins (RFC 9112 3.2.2) for the check *and* the backend.
        (req(f"http://{GOOD}/host", host="evil.test"), {"path": "/host", "host": [GOOD]}),
        (req("http://evil.test/host", host=GOOD), DENY),
        (req(f"http://evil@{GOOD}/host", host=GOOD), {"path": "/host", "host": [GOOD]}),  # userinfo dropped
        (req("http://good.test@evil.test/host", host=GOOD), DENY),
        # Two Host headers: joined (`good.test,evil.test`), which is no host.
        (req("/host", "Host: evil.test", host=GOOD), DENY),
        (req("/host", f"Host: {GOOD}", host="evil.test"), DENY),
        # Host with userinfo, a suffix, a bad port, empty, missing on HTTP/1.0.
        (req("/host", host=f"evil@{GOOD}"), DENY),
        (req("/host", host=f"{GOOD}@evil.test"), DENY),
        (req("/host", host=f"{GOOD}.evil.test"), DENY),
        (req("/host", host=f"x{GOOD}"), DENY),
        (req("/host", host=f"{GOOD}:abc"), DENY),
        (req("/host", host=""), DENY),
        (b"GET /host HTTP/1.0\r\n\r\n", REJECT),  # 426 from Envoy (HTTP/1.0 not accepted)
        # Allowed by design (host rules ignore case, a trailing dot and a port, as in Cilium); the
        # backend receives the Host that was checked.
        (req("/host", host=f"{GOOD}:8080"), {"host": [f"{GOOD}:8080"]}),
        (req("/host", host=f"{GOOD}."), {"host": [f"{GOOD}."]}),
        (req("/host", host="GOOD.Test"), {"host": ["GOOD.Test"]}),
        # Trailing whitespace is OWS: stripped before the check and before forwarding (CVE-2019-18802).
        (req("/host", host=f"{GOOD} "), {"host": [GOOD]}),
    ],
)
def test_request_target_and_host(lab: AdvLab, payload: bytes, want: str | dict[str, Any]) -> None:
    """Attack: a request target or Host that the policy and the backend read differently. Policy:
    `GET /host` only for host `good\\.test`; `GET /public(/.*)?` for any host. Expected: denied, or allowed
    with the backend receiving the host and path that were checked. Precedents: CVE-2019-18802
    (GHSA-356m-vhw2-wcm4, Host with trailing whitespace bypassed host matchers), envoyproxy/envoy#3515
    (Host with a port vs domains), envoyproxy/envoy#385 (host → :authority), RFC 9112 3.2.2."""
    check(lab, lab.send(close(payload)), want)


H2_BASE = [(":method", "GET"), (":scheme", "http")]


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        # :authority and a different host: :authority is checked and is the Host the backend gets.
        ([(":path", "/host"), (":authority", GOOD), ("host", "evil.test")], {"host": [GOOD]}),
        ([(":path", "/host"), (":authority", "evil.test"), ("host", GOOD)], DENY),
        # No :authority: host stands in for it (RFC 9113 8.3.1).
        ([(":path", "/host"), ("host", GOOD)], {"host": [GOOD]}),
        ([(":path", "/host"), ("host", "evil.test")], DENY),
        # Malformed: two :authority, two host, pseudo-header after a regular one, two :path.
        ([(":path", "/host"), (":authority", GOOD), (":authority", "evil.test")], REJECT),
        ([(":path", "/host"), (":authority", GOOD), ("host", GOOD), ("host", "evil.test")], REJECT),
        ([(":authority", BACKEND), ("x-key", "abc"), (":path", "/private")], REJECT),
        ([(":path", "/public"), (":path", "/private"), (":authority", BACKEND)], REJECT),
    ],
)
def test_http2_authority_vs_host(
    lab: AdvLab, headers: list[tuple[str, str]], want: str | dict[str, Any]
) -> None:
    """Attack: HTTP/2 prior knowledge with `:authority` and `host` disagreeing, or duplicated pseudo-
    headers (sent with a raw HPACK client: curl cannot). Policy: `GET /host` for `good\\.test`. Expected:
    denied, the stream refused, or allowed with the backend receiving the authority that was checked.
    Precedent: CVE-2023-27491 (Envoy forwarded invalid HTTP/2 headers upstream); RFC 9113 8.3.1."""
    h2_check(lab, lab.h2([*H2_BASE, *headers]), want)


def h2_check(lab: AdvLab, result: dict[str, Any], want: str | dict[str, Any]) -> None:
    if want == DENY:
        assert (result["status"], result["body"]) == (403, DENIED[1].decode()), result
    elif want == REJECT:
        assert result["status"] is None or 400 <= result["status"] < 500, result
        assert (
            result["status"] is not None
            or result["rst"] is not None
            or result["goaway"] is not None
            or (result["closed"])
        ), result
    else:
        assert isinstance(want, dict)
        assert result["status"] == 200, result
        (seen,) = lab.seen()
        assert json.loads(result["body"]) == seen
        assert {k: seen[k] for k in want} == want, seen
        return
    assert lab.seen() == []


# --- h2c upgrade and CONNECT -----------------------------------------------------------------------------

H2C = ("Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", "Connection: Upgrade, HTTP2-Settings")


def test_h2c_upgrade_is_ignored_and_the_request_checked_as_http1(lab: AdvLab) -> None:
    """Attack: h2c smuggling (Bishop Fox): `Upgrade: h2c` on HTTP/1.1 so that the backend switches the
    connection to HTTP/2 and every later request on it bypasses the proxy. Policy: GET `/public` only.
    Expected: Envoy strips the upgrade (envoyproxy/envoy#7981 "Do not 503 on Upgrade: h2c instead remove
    the header and ignore"): `/private` is 403, `/public` is 200 over HTTP/1.1 and the backend receives no
    `Upgrade` header. Precedent: dotnet/yarp#877, traefik/traefik#9341 (h2c smuggling)."""
    check(lab, lab.send(close(req("/private", *H2C))), DENY)
    exchange = lab.send(close(req("/public", *H2C)))
    check(lab, exchange, {"path": "/public", "upgrade": []})
    assert exchange.responses[0].header("upgrade") is None


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (f"CONNECT {BACKEND}:80 HTTP/1.1\r\nHost: {BACKEND}:80\r\n\r\n".encode(), DENY),
        (f"CONNECT {GOOD}:80 HTTP/1.1\r\nHost: {GOOD}:80\r\n\r\n".encode(), DENY),
        (f"CONNECT /public HTTP/1.1\r\nHost: {BACKEND}\r\n\r\n".encode(), REJECT),  # 400: not authority-form
    ],
)
def test_connect_is_refused(lab: AdvLab, payload: bytes, want: str) -> None:
    """Attack: CONNECT to open a raw tunnel through the proxy (then anything flows unchecked). Policy: GET
    rules only. Expected: 403 `Access denied` (the `deny-connect` route), or 400 for a malformed target;
    nothing reaches the backend. Precedent: cilium/cilium#24276 (CONNECT and L7 policies),
    cilium/cilium#45051 "[envoy] Add HTTP CONNECT support". HTTP/2 CONNECT: below."""
    check(lab, lab.send(payload), want)


def test_http2_connect_is_refused(lab: AdvLab) -> None:
    """As above, over HTTP/2 (`:method CONNECT` with only `:authority`)."""
    h2_check(lab, lab.h2([(":method", "CONNECT"), (":authority", f"{BACKEND}:80")]), DENY)


# --- methods ---------------------------------------------------------------------------------------------

RAW = f"HTTP/1.1\r\nHost: {BACKEND}\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (req("/public", method="get"), REJECT),  # 400: Envoy's codec knows methods case-sensitively
        (req("/public", method="Get"), REJECT),
        (req("/public", method="TRACE"), DENY),
        (req("/public", method="PROPFIND"), DENY),
        (req("/public", method="DELETE"), DENY),
        (req("/public", method="FOO"), REJECT),  # 400: unknown method
        (req("/public", method="GETX"), REJECT),
        (req("/public", method="XGET"), REJECT),
        (f" GET /public {RAW}".encode(), REJECT),
        (f"OPTIONS * {RAW}".encode(), REJECT),  # 404 from Envoy (no route for `*`)
        # The method stays a GET: X-HTTP-Method-Override is just a header (a backend honouring it is out of
        # scope of a method rule, as in Cilium).
        (req("/public", "X-HTTP-Method-Override: DELETE"), {"method": "GET", "path": "/public"}),
        # Extra whitespace in the request line: tolerated, and the backend gets exactly GET /public.
        (f"GET  /public {RAW}".encode(), {"method": "GET", "path": "/public"}),
        (f"GET\t/public {RAW}".encode(), {"method": "GET", "path": "/public"}),
    ],
)
def test_method_tricks_against_a_get_only_rule(
    lab: AdvLab, payload: bytes, want: str | dict[str, Any]
) -> None:
    """Attack: methods that a case-insensitive or prefix match would take for GET, or that a backend
    treats like GET. Policy: `GET /public(/.*)?`. Expected: denied or rejected; the tolerated request-line
    whitespace gives the backend exactly the GET that was checked. Precedents: rapid7/metasploit-framework
    #1317 (HTTP verb auth bypass), coreruleset/coreruleset#3580 (Envoy answers 400 to lower-case methods),
    cilium/cilium#13280 (HEAD against a GET rule is 403)."""
    check(lab, lab.send(close(payload) if b"Connection: close" not in payload else payload), want)


def test_head_against_a_get_rule_is_denied(lab: AdvLab) -> None:
    """HEAD gets the 403 head (Content-Length 15, no body) and nothing reaches the backend; over HTTP/2
    too; `GET ` with a trailing space as an HTTP/2 `:method` is a malformed stream. Precedent:
    cilium/cilium#13280."""
    raw = raw_exchange(lab, close(req("/public", method="HEAD")))
    assert raw.startswith(b"HTTP/1.1 403 ") and b"content-length: 15\r\n" in raw.lower()
    assert lab.seen() == []
    h2 = lab.h2([(":method", "HEAD"), (":scheme", "http"), (":path", "/public"), (":authority", BACKEND)])
    assert h2["status"] == 403
    h2_check(
        lab,
        lab.h2([(":method", "get"), (":scheme", "http"), (":path", "/public"), (":authority", BACKEND)]),
        DENY,
    )
    h2_check(
        lab,
        lab.h2([(":method", "GET "), (":scheme", "http"), (":path", "/public"), (":authority", BACKEND)]),
        REJECT,
    )
    assert lab.seen() == []


def raw_exchange(lab: AdvLab, payload: bytes) -> bytes:
    proc = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{lab.lab.client}",
            sys.executable,
            str(HERE / "http_rawclient.py"),
            BACKEND,
            "80",
            "2",
        ],
        input=payload,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return base64.b64decode(json.loads(proc.stdout)["data"])


# --- header tricks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        # Names are case-insensitive: a lower-case name is the same header (allowed correctly).
        (req("/value", "x-key: abc"), {"x-key": ["abc"]}),
        (req("/value", "X-KEY: abc"), {"x-key": ["abc"]}),
        # Whitespace before the colon (RFC 9112 5.1: MUST reject) and NUL in a value: 400.
        (req("/value", "X-Key : abc"), REJECT),
        (req("/value", "X-Key\t: abc"), REJECT),
        (req("/value", "X-Key: abc\x00"), REJECT),
        # obs-fold: the continuation is unfolded into the value (`ab c` ≠ `abc`), or hides a header.
        (req("/value", "X-Key: ab", " c"), DENY),
        (req("/value", "X-Key: abc", " evil"), DENY),
        (req("/value", "X-Other: x", " X-Key: abc"), DENY),
        # A bare CR in a value is dropped, never a line break: `abcX-Key: evil` ≠ `abc`.
        (req("/value", "X-Key: abc\rX-Key: evil"), DENY),
        # OWS around the value is no part of it (allowed, and the backend gets `abc`).
        (req("/value", "X-Key: \tabc \t"), {"x-key": ["abc"]}),
        # Exact values are anchored and case-sensitive; `_` is not `-`.
        (req("/value", "X-Key: abcd"), DENY),
        (req("/value", "X-Key: xabc"), DENY),
        (req("/value", "X-Key: ABC"), DENY),
        (req("/value", "X_Key: abc"), DENY),
        (req("/value"), DENY),
        # `headers: ["X-Key: a.*"]` is an exact value, not a regex.
        (req("/key", "X-Key: abc"), DENY),
        (req("/key", "X-Key: a"), DENY),
        (req("/key", "X-Key: a.*x"), DENY),
        (req("/key", "X-Key: a.*"), {"x-key": ["a.*"]}),
    ],
)
def test_header_tricks(lab: AdvLab, payload: bytes, want: str | dict[str, Any]) -> None:
    """Attack: header spellings that a matcher and a backend read differently (case of the name,
    whitespace before the colon, obs-fold, NUL and CR in values, unanchored or case-insensitive value
    matching). Policy: `GET /value` needs `X-Key: abc` (headerMatches), `GET /key` needs `X-Key: a.*`
    (headers). Expected: denied (403 or 400), or allowed with the backend receiving the value that was
    checked. Precedents: envoyproxy/envoy#22628 "[balsa] Reject NUL in first line, headers and trailers",
    #34088 "[balsa] Add tests to document behavior when header value contains CR or LF", #31009 (multi-line
    headers), CVE-2019-18802 (whitespace around values), RFC 9112 5.1/5.2."""
    check(lab, lab.send(close(payload)), want)


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ([("x-key", "abc")], {"x-key": ["abc"]}),
        ([("X-Key", "abc")], REJECT),  # upper case in an HTTP/2 name: malformed (RFC 9113 8.2.1)
        ([("x-key", "abc\x00")], REJECT),
        ([("x-key", "abc\r\nx-evil: 1")], REJECT),
        ([("x-key", " abc ")], DENY),  # HTTP/2 values are not trimmed: ` abc ` ≠ `abc`
        ([("transfer-encoding", "chunked"), ("x-key", "abc")], REJECT),  # connection-specific in HTTP/2
        ([("connection", "keep-alive"), ("x-key", "abc")], REJECT),
        ([("upgrade", "h2c"), ("x-key", "abc")], REJECT),
    ],
)
def test_http2_header_tricks(lab: AdvLab, headers: list[tuple[str, str]], want: str | dict[str, Any]) -> None:
    """The same over HTTP/2 (raw HPACK, so values can carry CR, LF and NUL). Policy: `GET /value` needs
    `X-Key: abc`. Expected: malformed streams are refused, never forwarded. Precedent: CVE-2023-27491
    (Envoy forwarded invalid HTTP/2 header values upstream; an upstream HTTP/1 could read two requests)."""
    base = [*H2_BASE, (":path", "/value"), (":authority", BACKEND)]
    h2_check(lab, lab.h2([*base, *headers]), want)


# --- limits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (req("/public/" + "a" * 8000), {"path": "/public/" + "a" * 8000}),
        (req("/private/" + "a" * 70000), REJECT),  # 431: over max_request_headers_kb (60 KiB)
        (req("/public/" + "a" * 70000), REJECT),
        (req("/public", "X-Big: " + "b" * 70000), REJECT),
        (req("/public", *(f"X-H{i}: v" for i in range(150))), REJECT),  # 431: over 100 headers
        (req("/public", "X-" + "n" * 20000 + ": v"), {"path": "/public"}),
    ],
    ids=["path-8k", "denied-path-70k", "allowed-path-70k", "header-70k", "150-headers", "name-20k"],
)
def test_very_long_paths_and_headers(lab: AdvLab, payload: bytes, want: str | dict[str, Any]) -> None:
    """Attack: request heads over the limits, to crash or wedge the proxy or to make it fail open (a
    truncated path or header that then matches). Policy: `GET /public(/.*)?`. Expected: 431 (nothing
    forwarded) over the limits, correct decisions under them; the next request on a fresh connection
    works (the fixture checks). Precedent: nginx `large_client_header_buffers`; Envoy
    `max_request_headers_kb` / `max_headers_count` (envoyproxy/envoy HCM docs)."""
    check(lab, lab.send(close(payload), idle=3), want)


# --- fragments, NUL, slashes, backslashes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "want"),
    [
        # Fragments are refused (400), not stripped nor escaped into the path (CVE-2021-32779).
        ("/private#x", REJECT),
        ("/public#/../private", REJECT),
        ("/public#x", REJECT),
        ("/public%23/../private", DENY),  # an encoded # is a path character: normalised to /private
        # NUL, raw or encoded.
        ("/public\x00/../private", REJECT),
        ("/public%00/../private", REJECT),
        ("/public/%00", REJECT),
        # Double and encoded slashes and backslashes.
        ("//private", DENY),
        ("/%2Fprivate", DENY),
        ("/%2fpublic/../private", DENY),
        ("/public/..%5cprivate", DENY),
        ("/public%5c..%5cprivate", DENY),
        ("/public/%2e%2e%5cprivate", DENY),
        ("/public\\..\\private", DENY),
        ("\\private", REJECT),  # not origin-form: 400
        ("/public/.%2e/private", DENY),
        ("/public/..", DENY),
        ("/PUBLIC", DENY),  # paths are case-sensitive
        ("/public?/../private", DENY),  # the query is part of the matched :path (as in Cilium)
        # Slashes merged *after* dot segments: `/public//../private` is `/public/private`, and that is
        # also what the backend receives, so a backend that merges slashes first never sees the `..`.
        ("/public//../private", {"path": "/public/private"}),
        ("/public/%2F%2F..%2F..%2Fprivate", {"path": "/public/private"}),
        ("/private/../public", {"path": "/public"}),
    ],
)
def test_fragments_nul_and_slashes(lab: AdvLab, target: str, want: str | dict[str, Any]) -> None:
    """Attack: path forms that the policy and a backend resolve differently (beyond the cases of
    test_http_findings.py). Policy: `GET /public(/.*)?`. Expected: denied or rejected, or allowed with the
    backend receiving the normalised path that was checked. Precedents: CVE-2021-32779 / Istio
    CVE-2021-39156 (fragment bypass of path policies), CVE-2019-9901 (envoyproxy/envoy#6435, dot segments),
    CVE-2021-29492 (escaped slashes), cisagov/Malcolm#1055 (encoding, slash doubling, case)."""
    payload = f"GET {target} HTTP/1.1\r\nHost: {BACKEND}\r\nConnection: close\r\n\r\n".encode("latin-1")
    check(lab, lab.send(payload), want)


@pytest.mark.parametrize(
    "path", ["/public#/../private", "/public/..%5cprivate", "//private", "/public/..%2Fprivate"]
)
def test_fragments_and_slashes_over_http2(lab: AdvLab, path: str) -> None:
    """The same over HTTP/2 (a `:path` with `#` is a 400; the rest are denied after normalisation)."""
    result = lab.h2([*H2_BASE, (":path", path), (":authority", BACKEND)])
    assert result["status"] in (400, 403), result
    assert lab.seen() == []


@pytest.mark.parametrize("path", ["/public/%c0%ae%c0%ae/private", "/public/%u002e%u002e/private"])
def test_legacy_encodings_are_forwarded_unchanged(lab: AdvLab, path: str) -> None:
    """Known limit, pinned: overlong UTF-8 (`%c0%ae`, Tomcat CVE-2008-2938) and IIS `%u` encodings of `.`
    are no dot segments to Envoy; the request is allowed under `/public` and forwarded unchanged. Only
    backends that decode these forms (obsolete ones) would resolve `/private`; see docs/security.md."""
    check(lab, lab.send(close(req(path))), {"path": path})
