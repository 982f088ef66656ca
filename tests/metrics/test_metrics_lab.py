"""Metrics of a real lab agent: docs/operations.md's table is exactly what it serves (names and types),
``promtool check metrics`` accepts the page, the histograms count real events, the dashboard's metrics are
served, and a real Prometheus server (Debian's) scrapes the node and answers PromQL on the flow verdict
counter after traffic.

One lab per module (one node: client, other, server, kube-dns; world hosts google.com and naver.com),
taken down in a finalizer; Prometheus runs in the node's network namespace (loopback: it reaches the
agent's 127.0.0.1:9962) with its own configuration and data directory, stopped by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from l7 import procs
from l7.lab import Lab, down
from l7.lab.topology import parse_topology
from tests.metrics.exposition import (
    DASHBOARDS,
    dashboard_queries,
    documented,
    promtool_check_metrics,
    queried_metrics,
    served,
)
from tests.observe.metric_lint import lint_exposition
from tests.observe.observe_lab import POLICIES, TOPOLOGY

pytestmark = pytest.mark.root

NAME = f"pxm{os.getpid() % 100000}"
PROMETHEUS_PORT = 19090
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.2)  # polling another process (the agent, Prometheus): nothing to wait on


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    policy_dir = tmp_path_factory.mktemp("policies")
    (policy_dir / "policies.yaml").write_text(POLICIES)
    try:
        yield Lab.up(parse_topology(TOPOLOGY), NAME, policies=policy_dir)
    finally:
        down(NAME)


def node_curl(lab: Lab, *args: str) -> str:
    """curl in the node's network namespace (where the agent's metrics address is loopback)."""
    argv = ["nsenter", f"--net=/run/netns/{lab.node_netns('n1')}", "curl", "-s", "-m", "5", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.returncode} {proc.stderr}"
    return proc.stdout


def scrape(lab: Lab) -> str:
    return node_curl(lab, "http://127.0.0.1:9962/metrics")


def traffic(lab: Lab) -> None:
    """Allowed and denied flows of every type: HTTP 200 and 403, an L3/L4 drop, DNS NOERROR and REFUSED,
    a toFQDNs connection (its answer's IPs learned first)."""
    server = next(ip for ip in lab.pod("server").ips if ":" not in ip)
    public = lab.exec("client", ["curl", "-s", "-m", "3", f"http://{server}/public"])
    assert public.stdout == "public\n", public
    private = lab.exec("client", ["curl", "-s", "-m", "3", f"http://{server}/private"])
    assert "Access denied" in private.stdout, private
    dropped = lab.exec("other", ["curl", "-s", "-m", "1", f"http://{server}/public"])
    assert dropped.returncode == 28, dropped
    refused = lab.exec("client", ["dig", "+time=1", "+tries=1", "naver.com", "A"])
    assert "status: REFUSED" in refused.stdout, refused.stdout
    fqdn = lab.exec(
        "client", ["curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", "http://google.com/"]
    )
    assert fqdn.returncode == 0, fqdn


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(scope="module")
def page(lab: Lab) -> str:
    """A /metrics page after the traffic, once the flows are counted (the flow logs are read at scrape)."""
    traffic(lab)

    def counted() -> str | None:
        text = scrape(lab)
        values = samples(text)
        drops = values.get(("l7gate_datapath_drops_total", (("reason", "policy-denied"),)), 0)
        refused = values.get(("l7gate_dns_queries_total", (("rcode", "REFUSED"),)), 0)
        http = sum(v for (name, _), v in values.items() if name == "l7gate_http_requests_total")
        return text if drops and refused and http >= 2 else None

    return wait_for("metrics with the traffic counted", counted)


def test_documented_is_served(page: str) -> None:
    docs, live = documented(), served(page)
    assert {n: t for n, t in docs.items() if n not in live} == {}, "documented, not served"
    assert {n: t for n, t in live.items() if n not in docs} == {}, "served, not documented"
    assert docs == live  # and of the same type


def test_promtool_and_lint(page: str) -> None:
    check = promtool_check_metrics(page)
    assert check.returncode == 0, check.stdout + check.stderr
    assert lint_exposition(page) == []


def test_histograms_count_real_events(page: str) -> None:
    values = samples(page)
    for name, at_least in (
        ("l7gate_policy_apply_seconds", 1),  # the first application
        ("l7gate_xds_convergence_seconds", 1),  # the HTTP rule's listener, ACKed
        ("l7gate_dns_proxy_upstream_latency_seconds", 2),  # dig google.com (traffic), curl google.com
        ("l7gate_dns_proxy_allow_latency_seconds", 1),  # google.com's IPs learned for toFQDNs
    ):
        count = values[(f"{name}_count", ())]
        assert count >= at_least, name
        assert values[(f"{name}_bucket", (("le", "+Inf"),))] == count
    (info,) = [labels for (name, labels) in values if name == "l7gate_build_info"]
    assert {k for k, _ in info} == {"version", "python", "kernel"}
    assert values[("l7gate_dns_proxy_queries_total", (("rcode", "REFUSED"), ("verdict", "refused")))] >= 1


def test_dashboard_metrics_are_served(page: str) -> None:
    live = served(page)
    histograms = {n for n, t in live.items() if t == "histogram"}
    for path in DASHBOARDS:
        assert queried_metrics(dashboard_queries(path), histograms) - set(live) == set(), path.name


def test_health_endpoints(lab: Lab, page: str) -> None:
    assert node_curl(lab, "http://127.0.0.1:9962/healthz").startswith("ok: the main loop went round ")
    assert node_curl(lab, "http://127.0.0.1:9962/readyz") == "ok: inputs applied\n"


def test_real_prometheus_scrapes_the_node(lab: Lab, page: str, tmp_path: Path) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "l7gate",
                "static_configs": [{"targets": ["127.0.0.1:9962"], "labels": {"node": "n1"}}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        "nsenter",
        f"--net=/run/netns/{lab.node_netns('n1')}",
        "prometheus",
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        "--log.level=warn",
    ]
    server = procs.spawn(argv, stdout=tmp_path / "prometheus.log")
    api = f"http://127.0.0.1:{PROMETHEUS_PORT}"

    def query(promql: str) -> list[dict[str, Any]]:
        out = json.loads(node_curl(lab, "-G", f"{api}/api/v1/query", "--data-urlencode", f"query={promql}"))
        assert out["status"] == "success", out
        result: list[dict[str, Any]] = out["data"]["result"]
        return result

    try:

        def ready() -> bool:
            assert server.alive(), (tmp_path / "prometheus.log").read_text()
            probe = subprocess.run(
                [
                    "nsenter",
                    f"--net=/run/netns/{lab.node_netns('n1')}",
                    "curl",
                    "-sf",
                    "-m",
                    "1",
                    f"{api}/-/ready",
                ],
                capture_output=True,
                timeout=10,
                check=False,
            )
            return probe.returncode == 0

        wait_for("Prometheus ready", ready)
        traffic(lab)  # more flows while Prometheus scrapes
        up = wait_for("a successful scrape", lambda: query('up{job="l7gate"} == 1'))
        assert up[0]["metric"]["node"] == "n1"
        verdicts = wait_for(
            "flow verdicts in Prometheus",
            lambda: (
                (r := query('sum by (type, verdict) (l7gate_flow_verdicts_total{job="l7gate"})'))
                and {("l3l4", "denied"), ("http", "denied"), ("dns", "denied")}
                <= {(s["metric"]["type"], s["metric"]["verdict"]) for s in r}
                and r
            ),
        )
        assert all(float(s["value"][1]) >= 1 for s in verdicts)
        p99 = query(
            "histogram_quantile(0.99, sum by (le) (l7gate_dns_proxy_upstream_latency_seconds_bucket))"
        )
        assert p99 and 0 < float(p99[0]["value"][1]) < 5
    finally:
        assert server.stop(timeout=10)
    assert not server.alive()
