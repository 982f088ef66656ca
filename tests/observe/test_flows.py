"""Flow records: parsing the three flow-log files, names, reading across rotation; the flow log writer;
the metrics collector's families against the naming lint (pure: no lab)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from metric_lint import lint_exposition, lint_name
from prometheus_client import CollectorRegistry, generate_latest

from dnsproxy.metrics import ProxyStats
from l7.agent.flows import FlowLog
from l7.agent.histogram import ALLOW_BUCKETS, APPLY_BUCKETS, CONVERGENCE_BUCKETS, Histogram
from l7.agent.metrics import AgentCollector, FlowCounts
from l7.flows import FlowReader, Names, parse_dns, parse_http, parse_l3l4, select

ENDPOINTS = {
    "endpoints": [
        {"name": "client", "namespace": "default", "ips": ["10.0.1.10", "fd00::10"]},
        {"name": "server", "namespace": "default", "ips": ["10.0.1.11"]},
        {"name": "kube-dns", "namespace": "kube-system", "ips": ["10.0.1.12"]},
    ],
    "nodes": [{"name": "n1", "ips": ["10.0.0.10"]}],
    "fqdns": {"google.com": ["10.0.250.10"]},
}
L3L4 = {
    "time": 100.0,
    "type": "drop",
    "hook": "from_lxc",
    "verdict": "drop",
    "reason": "POLICY_DENIED",
    "proto": 6,
    "src": "10.0.1.10",
    "dst": "10.0.1.11",
    "sport": 40000,
    "dport": 80,
    "src_identity": 300,
    "dst_identity": 301,
    "proxy_port": 0,
}
HTTP = {
    "start_time": "2026-11-22T20:00:00.500Z",
    "method": "GET",
    "path": "/private",
    "authority": "server",
    "protocol": "HTTP/1.1",
    "status": 403,
    "response_flags": "-",
    "route": "deny",
    "downstream_remote": "10.0.1.10:40001",
    "downstream_local": "10.0.1.11:80",
}
DNS = {
    "time": 101.0,
    "source_ip": "fd00::10",
    "source_port": 5353,
    "server_ip": "10.0.1.12",
    "server_port": 53,
    "protocol": "udp",
    "qname": "naver.com.",
    "qtype": 1,
    "rcode": 5,
    "ips": [],
    "verdict": "refused",
    "endpoint": "default/client",
}


def test_parse_each_kind() -> None:
    drop = parse_l3l4(L3L4, "n1")
    assert (drop.type, drop.verdict, drop.reason, drop.proto) == ("l3l4", "denied", "policy-denied", "TCP")
    assert (drop.dst_port, drop.src_identity) == (80, 300)
    redirect = parse_l3l4(
        {**L3L4, "type": "verdict", "verdict": "redirect", "reason": "NONE", "proxy_port": 15001}, "n1"
    )
    assert (redirect.verdict, redirect.reason) == ("allowed", "to-proxy:15001")
    http = parse_http(HTTP, "n1")
    assert (http.verdict, http.http_status, http.http_method, http.http_path) == (
        "denied",
        403,
        "GET",
        "/private",
    )
    assert (http.src_ip, http.src_port, http.dst_ip, http.dst_port) == ("10.0.1.10", 40001, "10.0.1.11", 80)
    assert http.time == 1795377600.5
    allowed = parse_http(
        {**HTTP, "route": "allow-0", "status": "200", "downstream_remote": "[fd00::10]:5"}, "n1"
    )
    assert (allowed.verdict, allowed.http_status, allowed.src_ip) == ("allowed", 200, "fd00::10")
    dns = parse_dns(DNS, "n1")
    assert (dns.verdict, dns.dns_rcode, dns.dns_qtype, dns.dns_qname) == (
        "denied",
        "REFUSED",
        "A",
        "naver.com",
    )
    ok = parse_dns({**DNS, "verdict": "allowed", "rcode": 0, "ips": [["10.0.250.10", 60]]}, "n1")
    assert (ok.verdict, ok.dns_rcode, ok.dns_ips) == ("allowed", "NOERROR", ("10.0.250.10",))


def test_names() -> None:
    names = Names(ENDPOINTS)
    flow = names.name(parse_l3l4(L3L4, "n1"))
    assert (flow.src, flow.dst) == ("default/client", "default/server")
    assert names.of("fd00:0::10") == "default/client"
    assert names.of("10.0.0.10") == "node:n1"
    assert names.of("10.0.250.10") == "google.com"
    names.learn(parse_dns({**DNS, "verdict": "allowed", "rcode": 0, "ips": [["10.9.9.9", 5]]}, "n1"))
    assert names.of("10.9.9.9") == "naver.com"
    assert flow.touches("client") and flow.touches("default/server") and not flow.touches("other")


def _write(path: Path, *objs: dict[str, Any]) -> None:
    with path.open("a") as fh:
        for obj in objs:
            fh.write(json.dumps(obj) + "\n")


def test_reader_orders_names_skips_garbage_and_follows_rotation(tmp_path: Path) -> None:
    _write(tmp_path / "flows-n1-l3l4.jsonl", L3L4)
    _write(tmp_path / "flows-n1-dns.jsonl", {**DNS, "time": 99.0})
    (tmp_path / "flows-n1-http.jsonl").write_text("not json\n" + json.dumps(HTTP) + "\n" + '{"partial": ')
    reader = FlowReader(tmp_path, Names(ENDPOINTS))
    flows = reader.poll()
    assert [f.type for f in flows] == ["dns", "l3l4", "http"]
    assert flows[0].src == "default/client" and flows[0].dst == "kube-system/kube-dns"
    assert reader.poll() == []
    with (tmp_path / "flows-n1-http.jsonl").open("a") as fh:  # the partial line completes (garbage)
        fh.write("1}\n")
    assert reader.poll() == []
    # rotation: the rest of the old file is read from .1, then the new file from its start
    path = tmp_path / "flows-n1-l3l4.jsonl"
    _write(path, {**L3L4, "time": 200.0})
    path.rename(tmp_path / "flows-n1-l3l4.jsonl.1")
    _write(path, {**L3L4, "time": 300.0})
    assert [f.time for f in reader.poll()] == [200.0, 300.0]
    fresh = [f.time for f in select(FlowReader(tmp_path).poll(), verdict="denied", type="l3l4")]
    assert fresh == [100.0, 200.0, 300.0]  # a new reader starts with the rotated history


def test_flow_log_rotates(tmp_path: Path) -> None:
    log = FlowLog(tmp_path / "flows-n1-l3l4.jsonl", max_bytes=200)
    for i in range(10):
        log.write({"time": i, "pad": "x" * 40})
    log.close()
    assert (tmp_path / "flows-n1-l3l4.jsonl.1").exists()
    lines = (tmp_path / "flows-n1-l3l4.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


class FakeService:
    """A node service as the metrics collector sees it: a name and the histograms it counts."""

    def __init__(self, name: str, **attributes: object) -> None:
        self.name = name
        self.__dict__.update(attributes)


def _histogram(bounds: tuple[float, ...], *values: float) -> Histogram:
    out = Histogram(bounds)
    for value in values:
        out.observe(value)
    return out


class FakeHost:
    """The agent as the metrics collector sees it, with every service's status filled in."""

    node = "n1"
    lock = threading.RLock()
    apply_seconds = _histogram(APPLY_BUCKETS, 0.004, 0.2)
    services = (
        FakeService("envoy", convergence=_histogram(CONVERGENCE_BUCKETS, 0.02)),
        FakeService("dns", allow_seconds=_histogram(ALLOW_BUCKETS, 0.0025), proxy_stats=ProxyStats()),
    )

    def status(self, state: str) -> dict[str, Any]:
        return {
            "ready": True,
            "generation": 3,
            "errors": [],
            "last_apply": {"seconds": 0.01},
            "services": {
                "envoy": {
                    "running": True,
                    "pushes": 3,
                    "acks": 9,
                    "nacks": 1,
                    "restarts": 0,
                    "convergence_seconds": 0.02,
                },
                "dns": {
                    "ports": [15053],
                    "cached_ips": 4,
                    "lookup_to_allowed_ms": {"n": 1, "p50": 2.5, "p99": 2.5, "max": 2.5},
                    "fast": 1,
                    "slow": 2,
                    "refused_source": 0,
                    "expired": 1,
                },
            },
        }

    @property
    def datapath(self) -> Any:
        raise AssertionError("no datapath")

    def last_view(self) -> None:
        return None


def test_metric_names_pass_the_lint(tmp_path: Path) -> None:
    _write(tmp_path / "flows-n1-l3l4.jsonl", L3L4)
    _write(tmp_path / "flows-n1-dns.jsonl", DNS)
    _write(tmp_path / "flows-n1-http.jsonl", HTTP)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(FakeHost(), FlowCounts(FlowReader(tmp_path), "n1")))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert lint_exposition(text) == []
    for line in (
        'l7gate_datapath_drops_total{reason="policy-denied"} 1.0',
        'l7gate_http_requests_total{status="403",verdict="denied"} 1.0',
        'l7gate_dns_queries_total{rcode="REFUSED"} 1.0',
        "l7gate_xds_nacks_total 1.0",
        'l7gate_xds_convergence_seconds_bucket{le="0.025"} 1.0',
        "l7gate_xds_convergence_seconds_sum 0.02",
        'l7gate_dns_proxy_allow_latency_seconds_bucket{le="0.001"} 0.0',
        'l7gate_dns_proxy_allow_latency_seconds_bucket{le="0.0025"} 1.0',
        'l7gate_policy_apply_seconds_bucket{le="0.005"} 1.0',
        'l7gate_policy_apply_seconds_bucket{le="0.25"} 2.0',
        "l7gate_policy_apply_seconds_count 2.0",
        'l7gate_dns_proxy_upstream_latency_seconds_bucket{le="+Inf"} 0.0',
        "l7gate_dns_proxy_in_flight 0.0",
        "l7gate_fqdn_cache_ips 4.0",
    ):
        assert line in text


def test_the_lint_catches_bad_names() -> None:
    assert lint_name("l7gate_drops", "counter", "x")  # no _total
    assert lint_name("l7gate_queue_total", "gauge", "x")
    assert lint_name("l7gate_latency_ms", "gauge", "x")
    assert lint_name("L7gate_Drops_total", "counter", "x")
    assert lint_name("other_drops_total", "counter", "x")
    assert lint_name("l7gate_ok", "gauge", "")
    assert lint_name("l7gate_apply_seconds", "gauge", "doc") == []
