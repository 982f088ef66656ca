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
from l7xds.bootstrap import bootstrap, render
from l7xds.cache import SnapshotCache
from l7xds.envoy_process import EnvoyAdmin, EnvoyProcess
from l7xds.observer import XdsStats
from l7xds.server import XdsServer
from l7xds.translate import ProxySettings, RuleSet, Translator
from test_http_findings import (
    BACKEND,
    DENIED,
    NODE,
    Exchange,
    Lab,
    LoopThread,
    _build_namespaces,
    _stop,
    poll,
    sh,
)

from l7.policy.model import HeaderMatch, HTTPRule

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
        backend_proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{backend}",
                sys.executable,
                str(HERE / "adv_http_backend.py"),
                str(ready),
                str(log),
            ],
            start_new_session=True,
        )
        cleanup.callback(_stop, backend_proc)
        poll("the backend", ready.exists)

        loop = LoopThread()
        cleanup.callback(loop.close)
        cache, stats = SnapshotCache(), XdsStats()
        server = XdsServer(cache, stats)
        address = loop.run(server.start(f"unix:{work}/xds.sock"))
        cleanup.callback(lambda: loop.run(server.stop(0)))

        config = work / "bootstrap.yaml"
        admin_address = f"unix:{work}/admin.sock"
        config.write_text(render(bootstrap(node_id=NODE, xds_address=address, admin_address=admin_address)))
        settings = ProxySettings(upstream_mark=0xA00, ipv6=False)
        envoy = EnvoyProcess.start(config, work, argv_prefix=["nsenter", f"--net=/run/netns/{router}"])
        cleanup.callback(envoy.stop)
        admin = EnvoyAdmin(admin_address)
        cleanup.callback(admin.close)
        lab = Lab(client, loop, cache, stats, Translator(), settings, envoy, admin)
        lab.apply(RULES)
        envoy.wait_ready(admin)
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
