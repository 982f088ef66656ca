"""Regression tests for the HTTP findings of issue 11 (1–4), through a real Envoy with real bytes.

Topology (namespaces created here, prefix ``l7gsh-``; addresses 10.215.x.x only)::

    client (10.215.1.2) ─veth─ router (Envoy; nft tproxy tcp/80 → :15001) ─veth─ backend (10.215.2.2:80)

The router's nftables ``tproxy`` rule plus ``ip rule fwmark 0x1 → table 100`` stand in for the eBPF
datapath's redirect (as in tests/xds/test_envoy.py). The backend (http_backend.py) answers with the
method, the path and every ``X-Token`` value it received, so a test sees what the backend saw. Raw bytes
go through http_rawclient.py inside the client namespace; curl is the real client for HTTP/2 (h2c prior
knowledge). Everything is torn down in finalizers: processes by PID, then the namespaces.
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

import pytest

from l7 import procs
from l7.policy.model import HeaderMatch, HTTPRule, Mismatch, Secret
from l7xds import resources as rt
from l7xds.cache import SnapshotCache
from l7xds.envoy_process import EnvoyAdmin, EnvoyProcess
from l7xds.observer import XdsStats
from l7xds.snapshot import subset_version
from l7xds.translate import ProxySettings, RuleSet, Translator
from tests.xds.envoy_harness import LoopThread, poll, sh, start_xds_envoy

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
NODE = "l7gsh-node"
PORT = 15001
BACKEND = "10.215.2.2"
DENIED = (403, b"Access denied\r\n")
TOKEN = "abc"
RULES: RuleSet = (
    HTTPRule(method="GET", path="^/public(/.*)?$"),
    HTTPRule(method="GET", path="/ws/public"),
    HTTPRule(method="GET", path=r"/api/.*\.json"),
    HTTPRule(method="GET", path=r"/query\?.*"),
    # finding 1: an exact header value, a secret's value, and a value with each mismatch action
    HTTPRule(method="GET", path="/headers", headers=(f"X-Token: {TOKEN}",)),
    HTTPRule(
        method="GET", path="/secret", header_matches=(HeaderMatch(name="X-Token", secret=Secret(name="tok")),)
    ),
    HTTPRule(method="GET", path="/value", header_matches=(HeaderMatch(name="X-Token", value=TOKEN),)),
    HTTPRule(
        method="GET",
        path="/delete",
        header_matches=(HeaderMatch(name="X-Token", value=TOKEN, mismatch=Mismatch.DELETE),),
    ),
    HTTPRule(
        method="GET",
        path="/add",
        header_matches=(HeaderMatch(name="X-Token", value=TOKEN, mismatch=Mismatch.ADD),),
    ),
)
@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass(frozen=True)
class Exchange:
    """What came back on one connection: the parsed responses, whether the peer closed it, and the
    bytes after a 101 (the tunnel)."""

    responses: tuple[Response, ...]
    closed: bool
    tunnel: bytes


def parse_responses(data: bytes) -> tuple[tuple[Response, ...], bytes]:
    """HTTP/1.1 responses with content-length bodies, in order; the rest after a 101 is returned."""
    out: list[Response] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"truncated response head: {data!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = tuple(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines[1:])
        )
        if status == 101:
            out.append(Response(status, headers, b""))
            return tuple(out), rest
        length = int(next((v for k, v in headers if k == "content-length"), "0"))
        assert len(rest) >= length, f"truncated body: {data!r}"
        out.append(Response(status, headers, rest[:length]))
        data = rest[length:]
    return tuple(out), b""


@dataclass
class Lab:
    client: str
    loop: LoopThread
    cache: SnapshotCache
    stats: XdsStats
    translator: Translator
    settings: ProxySettings
    envoy: EnvoyProcess
    admin: EnvoyAdmin

    def apply(self, rules: RuleSet) -> None:
        """Publish and wait until Envoy ACKed this exact route configuration."""
        snapshot = self.translator.snapshot({PORT: rules}, self.settings)

        async def publish() -> None:
            self.cache.set_snapshot(NODE, snapshot)

        self.loop.run(publish())
        version = subset_version(snapshot.resources(rt.ROUTE).values())
        poll("the RDS ACK", lambda: self.stats.acked.get((NODE, rt.ROUTE)) == version)

    def curl(self, path: str, *args: str) -> tuple[int, bytes]:
        proc = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.client}",
                "curl",
                "-sS",
                "-m",
                "5",
                "--path-as-is",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                *args,
                f"http://{BACKEND}{path}",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        body, _, code = proc.stdout.rpartition(b"\n")
        return int(code), body

    def send(self, payload: bytes, idle: float = 1.0, tunnel: float | None = None) -> Exchange:
        """Send raw bytes on one connection from the client namespace; parse what comes back."""
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.client}",
            sys.executable,
            str(HERE / "http_rawclient.py"),
            BACKEND,
            "80",
            str(idle),
        ]
        if tunnel is not None:
            argv.append(str(tunnel))
        proc = subprocess.run(argv, input=payload, capture_output=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        responses, rest = parse_responses(base64.b64decode(result["data"]))
        return Exchange(responses, result["closed"], rest + base64.b64decode(result["second"]))


def request(path: str, *headers: str, method: str = "GET", close: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {BACKEND}", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def one(lab: Lab, payload: bytes) -> tuple[int, bytes]:
    """One request (sent with ``Connection: close``, so nobody waits for an idle timeout)."""
    assert payload.endswith(b"\r\n\r\n")
    exchange = lab.send(payload[:-2] + b"Connection: close\r\n\r\n", idle=5)
    assert len(exchange.responses) == 1, exchange
    return exchange.responses[0].status, exchange.responses[0].body


def _build_namespaces(client: str, router: str, backend: str) -> None:
    for ns in (client, router, backend):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "c0", "netns", client, "type", "veth", "peer", "name", "r0", "netns", router)
    sh("ip", "link", "add", "b0", "netns", backend, "type", "veth", "peer", "name", "r1", "netns", router)
    for ns, dev, v4 in (
        (client, "c0", "10.215.1.2/24"),
        (router, "r0", "10.215.1.1/24"),
        (router, "r1", "10.215.2.1/24"),
        (backend, "b0", "10.215.2.2/24"),
    ):
        sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", client, "route", "add", "default", "via", "10.215.1.1")
    sh("ip", "-n", backend, "route", "add", "default", "via", "10.215.2.1")
    for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
        sh("nsenter", f"--net=/run/netns/{router}", "sysctl", "-qw", key)
    sh("ip", "-n", router, "rule", "add", "fwmark", "0x1/0xff", "lookup", "100")
    sh("ip", "-n", router, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    ruleset = f"""
table ip l7gsh {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        tcp dport 80 meta mark set 0x1 tproxy to :{PORT} accept
    }}
}}
"""
    subprocess.run(
        ["nsenter", f"--net=/run/netns/{router}", "nft", "-f", "-"], input=ruleset, text=True, check=True
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    prefix = f"l7gsh-{secrets.token_hex(3)}"
    client, router, backend = f"{prefix}-c", f"{prefix}-r", f"{prefix}-b"
    work = tmp_path_factory.mktemp("l7gsh-envoy")
    with contextlib.ExitStack() as cleanup:
        for ns in (backend, router, client):
            cleanup.callback(sh, "ip", "netns", "delete", ns, check=False)
        _build_namespaces(client, router, backend)

        ready = work / "backend.ready"
        serve = ["nsenter", f"--net=/run/netns/{backend}", sys.executable, str(HERE / "http_backend.py")]
        backend_proc = procs.spawn(
            [*serve, str(ready)],
            stdout=work / "backend.log",
            stderr="stdout",
        )
        cleanup.callback(backend_proc.stop)
        poll("the backend", ready.exists)

        x = start_xds_envoy(cleanup, work, NODE, router)
        settings = ProxySettings(upstream_mark=0xA00, ipv6=False, secrets={("default", "tok"): TOKEN})
        lab = Lab(client, x.loop, x.cache, x.stats, Translator(), settings, x.envoy, x.admin)
        lab.apply(RULES)
        x.envoy.wait_ready(x.admin)
        yield lab


WEBSOCKET = (
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
)


def test_lab_sanity(lab: Lab) -> None:
    assert lab.curl("/public") == (200, b"backend GET /public x-token=\n")
    assert lab.curl("/private") == DENIED
    assert lab.stats.nacks == 0


# --- finding 1: repeated header fields ------------------------------------------------------------------

HEADER_PATHS = ("/headers", "/secret", "/value")  # headers, headerMatches (secret), headerMatches (value)


@pytest.mark.parametrize("path", HEADER_PATHS)
@pytest.mark.parametrize(
    "tokens",
    [("evil", TOKEN), (TOKEN, "evil"), (TOKEN, TOKEN), (TOKEN, "")],
    ids=["evil-first", "evil-last", "same-twice", "empty-second"],
)
def test_repeated_header_never_satisfies_an_exact_value_http1(
    lab: Lab, path: str, tokens: tuple[str, ...]
) -> None:
    """The occurrences are joined (``evil,abc``) before matching: that is not ``abc``."""
    assert one(lab, request(path, *(f"X-Token: {t}" for t in tokens))) == DENIED
    # One field with the right value passes, and the backend gets exactly that one field.
    assert one(lab, request(path, f"X-Token: {TOKEN}")) == (
        200,
        f"backend GET {path} x-token={TOKEN}\n".encode(),
    )
    assert one(lab, request(path, f"X-Token: evil, {TOKEN}")) == DENIED


@pytest.mark.parametrize("path", HEADER_PATHS)
def test_repeated_header_never_satisfies_an_exact_value_http2(lab: Lab, path: str) -> None:
    for tokens in (("evil", TOKEN), (TOKEN, "evil"), (TOKEN, TOKEN)):
        headers = [arg for token in tokens for arg in ("-H", f"X-Token: {token}")]
        assert lab.curl(path, "--http2-prior-knowledge", *headers) == DENIED, tokens
    allowed = lab.curl(path, "--http2-prior-knowledge", "-H", f"X-Token: {TOKEN}")
    assert allowed == (200, f"backend GET {path} x-token={TOKEN}\n".encode())


def test_repeated_header_is_a_mismatch_for_mismatch_actions(lab: Lab) -> None:
    """DELETE removes every occurrence; ADD appends to the joined field (the backend never sees a lone
    ``evil`` first and ``abc`` later as two fields that each look checked)."""
    assert one(lab, request("/delete", "X-Token: evil", f"X-Token: {TOKEN}")) == (
        200,
        b"backend GET /delete x-token=\n",
    )
    assert one(lab, request("/add", f"X-Token: {TOKEN}", "X-Token: evil")) == (
        200,
        f"backend GET /add x-token={TOKEN},evil|{TOKEN}\n".encode(),
    )
    assert one(lab, request("/delete", f"X-Token: {TOKEN}")) == (200, b"backend GET /delete x-token=abc\n")


def test_repeated_header_reaches_the_backend_as_the_one_field_that_was_checked(lab: Lab) -> None:
    assert one(lab, request("/public", "X-Token: a", "X-Token: b")) == (
        200,
        b"backend GET /public x-token=a,b\n",
    )
    assert lab.curl("/public", "--http2-prior-knowledge", "-H", "X-Token: a", "-H", "X-Token: b") == (
        200,
        b"backend GET /public x-token=a,b\n",
    )


# --- finding 2: paths that backends resolve differently --------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/public/..%3Bx/admin",
        "/public/..%3bx/admin",
        "/public/%2e%2e%3Bx/admin",
        "/public/%2e%2e;x/admin",
        "/public/.%2e;/admin",
        "/public/..;x/admin",  # refused before the fix too (kept as a regression test)
        "/public/..;/admin",
        "/public/.;/admin/..;/..;/admin",
        "/public/x;y",
        "/public/%252e%252e/admin",
        "/public/%252e%252e%252fadmin",
        "/public/..%255cadmin",
        "/public/..%253badmin",
        "/api/secret;.json",
    ],
)
def test_ambiguous_paths_are_refused(lab: Lab, path: str) -> None:
    assert one(lab, request(path)) == DENIED
    assert lab.curl(path, "--http2-prior-knowledge") == DENIED


@pytest.mark.parametrize(
    "path", ["/public/../private", "/public/%2e%2e/private", "/public/..%2Fprivate", "/public/..\\private"]
)
def test_unencoded_and_escaped_dot_segments_stay_refused(lab: Lab, path: str) -> None:
    assert one(lab, request(path)) == DENIED


def test_unambiguous_paths_still_work(lab: Lab) -> None:
    assert one(lab, request("/public/x")) == (200, b"backend GET /public/x x-token=\n")
    assert one(lab, request("/api/v1.json")) == (200, b"backend GET /api/v1.json x-token=\n")
    # ; and %3B in the query string are no path parameters
    assert one(lab, request("/query?a=1;b=%3B")) == (200, b"backend GET /query?a=1;b=%3B x-token=\n")
    # Envoy resolves a ;-segment followed by .. itself and forwards the path it checked
    assert one(lab, request("/public/a/;/../b")) == (200, b"backend GET /public/a/b x-token=\n")


# --- finding 3: pipelined requests after a deny ---------------------------------------------------------


@pytest.mark.parametrize(
    "paths",
    [
        ("/public", "/private", "/public/x"),
        ("/public", "/private", "/private", "/public/x", "/private", "/public/y"),
        ("/private", "/private", "/private", "/public/x"),
    ],
    ids=["allow-deny-allow", "mixed", "three-denies"],
)
def test_pipelined_requests_after_a_deny_are_all_answered(lab: Lab, paths: tuple[str, ...]) -> None:
    exchange = lab.send(b"".join(request(p) for p in paths), idle=2)
    got = [(r.status, r.body) for r in exchange.responses]
    want = [DENIED if p == "/private" else (200, f"backend GET {p} x-token=\n".encode()) for p in paths]
    assert got == want
    assert not exchange.closed  # keep-alive survives the deny


def test_pipelined_request_after_a_denied_request_with_a_body(lab: Lab) -> None:
    payload = (
        request("/public")
        + request("/private", "Content-Length: 5", method="POST")
        + b"hello"
        + request("/public/x")
    )
    exchange = lab.send(payload, idle=2)
    assert [(r.status, r.body) for r in exchange.responses] == [
        (200, b"backend GET /public x-token=\n"),
        DENIED,
        (200, b"backend GET /public/x x-token=\n"),
    ]


def test_last_pipelined_request_with_connection_close_is_answered_then_closed(lab: Lab) -> None:
    exchange = lab.send(request("/public") + request("/private") + request("/public/x", close=True), idle=2)
    assert [r.status for r in exchange.responses] == [200, 403, 200]
    assert exchange.closed


# --- finding 4: WebSocket upgrades ----------------------------------------------------------------------


def test_websocket_upgrade_to_a_denied_path_gets_the_policy_403(lab: Lab) -> None:
    exchange = lab.send(request("/private", *WEBSOCKET))
    (response,) = exchange.responses
    assert (response.status, response.body) == DENIED
    assert response.header("content-type") == "text/plain"
    assert exchange.tunnel == b""


def test_websocket_upgrade_to_an_allowed_path_is_proxied(lab: Lab) -> None:
    exchange = lab.send(request("/ws/public", *WEBSOCKET), tunnel=2)
    (response,) = exchange.responses
    assert response.status == 101 and response.header("upgrade") == "websocket"
    assert exchange.tunnel == b"ping"  # bytes flow both ways through the tunnel


def test_unknown_upgrade_and_connect_get_the_policy_403(lab: Lab) -> None:
    exchange = lab.send(request("/public", "Upgrade: foo", "Connection: Upgrade"))
    assert [(r.status, r.body) for r in exchange.responses] == [DENIED]
    connect = f"CONNECT {BACKEND}:443 HTTP/1.1\r\nHost: {BACKEND}:443\r\n\r\n".encode()
    assert [(r.status, r.body) for r in lab.send(connect).responses] == [DENIED]
