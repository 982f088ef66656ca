"""The agent's HTTP endpoints on a real agent loop (fake datapath, metrics service on 127.0.0.1:0):
``/readyz`` is 503 until the inputs are applied, ``/healthz`` 503 while the main loop is stuck (the test
holds the agent's lock), ``/metrics`` serves histograms and ``l7gate_build_info`` that ``promtool check
metrics`` accepts, anything else is 404, and the server is gone once the agent stops."""

from __future__ import annotations

import platform
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from l7.agent.metrics import MetricsAddressError, MetricsService, parse_addr
from l7.agent.node import Agent, AgentConfig
from l7.endpoints import EndpointsFile
from tests.agent.agent_helpers import SEED_002_ENDPOINTS, SEEDS, FakeDatapath, wait_for
from tests.metrics.exposition import promtool_check_metrics

SEED = SEEDS / "002-allow-public-from-prod.yaml"


@dataclass
class Running:
    agent: Agent
    metrics: MetricsService
    policies: Path
    url: str


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """An agent whose policy file is broken at first (so it is not ready), running its loop on a thread."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nspec: [\n")

    def interfaces(_file: EndpointsFile) -> dict[str, str]:
        return {"default/service-pod": "lo"}

    cfg = AgentConfig(
        node="k8s-w1",
        policies=policies,
        endpoints=SEED_002_ENDPOINTS,
        state_dir=tmp_path / "state",
        datapath_name="test",
        interfaces=interfaces,
        poll_interval=0.05,
        metrics_address="127.0.0.1:0",
    )
    metrics = MetricsService(cfg)
    agent = Agent(cfg, open_datapath=lambda _name: FakeDatapath(), services=[metrics])
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), name="agent-under-test")
    thread.start()
    try:
        wait_for("the metrics server", lambda: metrics.status()["serving"])
        host, port = metrics.addr
        yield Running(agent, metrics, policies, f"http://{host}:{port}")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def test_readyz_once_inputs_applied(running: Running) -> None:
    not_ready = get(f"{running.url}/readyz")
    assert (not_ready.status_code, not_ready.text) == (503, "not ready: the inputs are not applied yet\n")
    assert get(f"{running.url}/healthz").status_code == 200  # alive all the same
    shutil.copy(SEED, running.policies / "p.yaml")
    ready = wait_for("ready", lambda: (r := get(f"{running.url}/readyz")).status_code == 200 and r)
    assert ready.text == "ok: inputs applied\n"


def test_healthz_503_while_the_loop_is_stuck(running: Running) -> None:
    live = get(f"{running.url}/healthz")
    assert live.status_code == 200 and live.text.startswith("ok: the main loop went round ")
    running.metrics.liveness_timeout = 0.3
    with running.agent.lock:  # the loop cannot go round while the test holds its lock
        stuck = wait_for("503", lambda: (r := get(f"{running.url}/healthz")).status_code == 503 and r)
        assert stuck.text.startswith("stuck: the main loop last went round ")
        assert get(f"{running.url}/metrics").status_code == 200  # scrapes do not need the loop
    wait_for("alive again", lambda: get(f"{running.url}/healthz").status_code == 200)


def test_metrics_histograms_and_build_info(running: Running) -> None:
    shutil.copy(SEED, running.policies / "p.yaml")
    wait_for("ready", lambda: get(f"{running.url}/readyz").status_code == 200)
    response = get(f"{running.url}/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    (info,) = families["l7gate_build_info"].samples
    assert info.value == 1.0
    assert info.labels["python"] == platform.python_version()
    assert info.labels["kernel"] == platform.release()
    assert info.labels["version"]
    applies = families["l7gate_policy_apply_seconds"]
    assert applies.type == "histogram"
    count = next(s.value for s in applies.samples if s.name.endswith("_count"))
    assert count >= 1
    inf = next(s.value for s in applies.samples if s.labels.get("le") == "+Inf")
    assert inf == count
    check = promtool_check_metrics(response.text)
    assert check.returncode == 0, check.stdout + check.stderr


def test_other_paths_and_methods(running: Running) -> None:
    missing = get(f"{running.url}/")
    assert missing.status_code == 404 and "/healthz" in missing.text
    post = httpx.post(f"{running.url}/healthz", timeout=5)
    assert post.status_code == 405


def test_server_closed_when_the_agent_stops(tmp_path: Path) -> None:
    cfg = AgentConfig(
        node="n",
        policies=SEED,
        endpoints=SEED_002_ENDPOINTS,
        state_dir=tmp_path,
        datapath_name="test",
        interfaces=lambda _file: {},
        metrics_address="127.0.0.1:0",
    )
    metrics = MetricsService(cfg)
    agent = Agent(cfg, open_datapath=lambda _name: FakeDatapath(), services=[metrics])
    agent.start()
    url = f"http://127.0.0.1:{metrics.addr[1]}/healthz"
    assert get(url).status_code == 200
    agent.close()
    with pytest.raises(httpx.ConnectError):
        get(url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9962", ("127.0.0.1", 9962)), ("0.0.0.0:9962", ("0.0.0.0", 9962)), ("[::]:9", ("::", 9))],
)
def test_parse_addr(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize("text", ["9962", "host:", "h:99999", "h:x"])
def test_parse_addr_rejects(text: str) -> None:
    with pytest.raises(MetricsAddressError, match="expected host:port"):
        parse_addr(text)
