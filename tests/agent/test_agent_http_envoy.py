"""The agent's Envoy service (l7.agent.envoy) with a real Envoy in a namespace of its own, and the pure
helpers that decide what a retired proxy port's listener does.

Envoy runs in a fresh network namespace (``hx-…``, deleted in the finalizer) through ``nsenter``; no
traffic is sent, the checks are on Envoy's ACKs/NACKs, its listening sockets and the PID file.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from l7.agent.envoy import EnvoyService, XdsOnlyService, stop_envoy
from l7.agent.envoy_files import EnvoyRecord, listening_ports
from l7.agent.http_redirects import Redirects, follow, successors, union_rules
from l7.agent.services import ServiceHost
from l7.policy.model import HTTPRule
from l7.resolve.types import L7RuleSet
from l7xds import resources as rt

GET_PUBLIC = (HTTPRule(method="GET", path="/public"),)
GET_PRIVATE = (HTTPRule(method="GET", path="/private"),)


# ------------------------------------------------------------------------------------------ pure
def test_union_rules() -> None:
    a = L7RuleSet("http", GET_PUBLIC)
    b = L7RuleSet("http", (*GET_PRIVATE, *GET_PUBLIC))
    assert union_rules([a, b]) == (*GET_PUBLIC, *GET_PRIVATE)
    assert union_rules([a, L7RuleSet("http", ())]) == ()  # a member without rules allows everything


def test_successors() -> None:
    flow_a: tuple[str, int, int, int | None] = ("ns/a", 0, 0, 6)
    flow_b: tuple[str, int, int, int | None] = ("ns/b", 0, 7, 6)
    before: Redirects = {flow_a: [(80, 80, 10001)], flow_b: [(80, 80, 10002), (443, 443, 10003)]}
    after: Redirects = {flow_a: [(80, 80, 10004)], flow_b: [(80, 80, 10004)]}
    found = successors(before, after, [10001, 10002, 10003])
    assert found == {10001: 10004, 10002: 10004, 10003: None}  # 443 no longer redirected
    split: Redirects = {flow_a: [(80, 80, 10004)], flow_b: [(80, 80, 10005)]}
    both: Redirects = {flow_a: [(80, 80, 10001)], flow_b: [(80, 80, 10001)]}
    assert successors(both, split, [10001]) == {10001: None}
    partly: Redirects = {flow_a: [(1, 100, 10001)]}
    half: Redirects = {flow_a: [(1, 50, 10004)]}
    assert successors(partly, half, [10001]) == {10001: None}
    whole: Redirects = {flow_a: [(1, 50, 10004), (51, 100, 10004)]}
    assert successors(partly, whole, [10001]) == {10001: 10004}


def test_follow() -> None:
    found = {10002: 10003}
    assert follow(10002, found, {10003}) == 10003  # the successor went out of use too
    assert follow(10003, found, {10003}) == 10003
    assert follow(10002, {10002: None}, {10003}) is None
    assert follow(10002, {10002: 10002}, {10003}) is None  # no loop


# ------------------------------------------------------------------------------------ real Envoy
class Host:
    def __init__(self, state_dir: Path) -> None:
        self.node = "hxn"
        self.state_dir = state_dir
        self.lock = threading.RLock()


def host(state_dir: Path) -> ServiceHost:
    return cast(ServiceHost, Host(state_dir))


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"hx-envoy-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    assert not stop_envoy(tmp_path, "hxn"), "the test left Envoy running"


def service(netns: str) -> EnvoyService:
    return EnvoyService(argv_prefix=("nsenter", f"--net=/run/netns/{netns}"))


@pytest.mark.root
def test_service_publishes_waits_and_reports_nacks(netns: str, state_dir: Path) -> None:
    svc = service(netns)
    svc.start(host(state_dir))
    try:
        assert svc.publish({15001: GET_PUBLIC})
        assert ("4", 15001) in listening_ports(svc.pid or 0)
        lds = svc.stats.acked["hxn", rt.LISTENER]
        listener = svc._snapshot.resources(rt.LISTENER)  # type: ignore[union-attr]
        # Only the routes change: the listener is byte-identical (an RDS-only update, nothing drains).
        assert svc.publish({15001: GET_PRIVATE})
        assert svc.stats.acked["hxn", rt.LISTENER] == lds
        assert svc._snapshot.resources(rt.LISTENER) == listener  # type: ignore[union-attr]
        routes = svc.stats.acked["hxn", rt.ROUTE]
        # A regex Envoy's RE2 rejects: NACKed quickly, reported, Envoy keeps the previous routes.
        started = time.monotonic()
        assert not svc.publish({15001: (HTTPRule(method="GET", path="/private("),)})
        assert time.monotonic() - started < 1.5
        status = svc.status()
        assert status["nacks"] == 1 and status["acked"]["RDS"] == routes
        assert status["last_nack"]["type"] == "RDS"
        assert status["last_nack"]["resources"] == ["l7gate-http-15001"]
        assert "missing )" in status["last_nack"]["error"]
        assert status["rejected"]["type"] == "RDS" and "missing )" in status["rejected"]["error"]
        assert status["running"] and status["pid"] == svc.pid
        # A second port: the wait covers its listening socket.
        assert svc.publish({15001: GET_PRIVATE, 15002: ()})
        assert svc.status()["rejected"] is None  # the latest configuration is ACKed
        assert {("4", 15001), ("4", 15002)} <= listening_ports(svc.pid or 0)
    finally:
        svc.close()
        svc.stop_envoy()


@pytest.mark.root
def test_envoy_is_adopted_restarted_and_stopped(netns: str, state_dir: Path) -> None:
    first = service(netns)
    first.start(host(state_dir))
    assert first.publish({15001: GET_PUBLIC})
    pid = first.pid
    first.close()  # the agent goes away; Envoy stays
    record = EnvoyRecord.load(state_dir / "envoy-hxn.pid")
    assert record is not None and record.pid == pid and record.alive()

    second = service(netns)
    second.start(host(state_dir))
    try:
        assert second.pid == pid and second.status()["adopted"]
        assert second.publish({15001: GET_PUBLIC})  # Envoy reconnected to the same socket path
        os.kill(pid or 0, signal.SIGKILL)  # the supervisor restarts it
        deadline = time.monotonic() + 10
        while second.status()["restarts"] == 0 or not second.status()["running"]:
            assert time.monotonic() < deadline, second.status()
            time.sleep(0.05)
        assert second.pid != pid
        snapshot = second._snapshot
        assert snapshot is not None and second.wait_applied(snapshot, {15001}, 10)
        new = EnvoyRecord.load(state_dir / "envoy-hxn.pid")
        assert new is not None and new.pid == second.pid
    finally:
        second.close()
    assert stop_envoy(state_dir, "hxn")
    assert not (state_dir / "envoy-hxn.pid").exists()
    assert new is not None and not new.alive()


@pytest.mark.root
def test_xds_only_service_serves_an_envoy_it_does_not_run(netns: str, state_dir: Path) -> None:
    """Kubernetes: Envoy is its own DaemonSet; the agent's ``xds`` service only serves the socket its
    bootstrap points at, and waits for that Envoy's listeners like for its own."""
    from l7xds.bootstrap import bootstrap, render
    from l7xds.envoy_process import EnvoyProcess

    svc = XdsOnlyService()
    svc.start(host(state_dir))
    config = state_dir / "external" / "bootstrap.yaml"
    config.parent.mkdir()
    config.write_text(
        render(
            bootstrap(
                node_id="hxn",
                xds_address=f"unix:{state_dir / 'xds-hxn.sock'}",
                admin_address=f"unix:{state_dir / 'external' / 'admin.sock'}",
            )
        )
    )
    envoy = EnvoyProcess.start(config, config.parent, argv_prefix=("nsenter", f"--net=/run/netns/{netns}"))
    try:
        svc.netns_pid = envoy.pid
        assert svc.publish({15001: GET_PUBLIC}, timeout=10)
        assert svc.pid is None and ("4", 15001) in listening_ports(envoy.pid)
        assert svc.status()["acked"]["LDS"]
        assert not (state_dir / "envoy-hxn.pid").exists()  # nothing of its own to adopt or stop
    finally:
        svc.close()
        envoy.stop()
