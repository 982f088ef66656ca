"""``l7gate observe``, ``l7gate status`` and the metrics endpoint against a real lab: an L3/L4 drop, an
HTTP 403 from Envoy and a DNS REFUSED from the DNS proxy appear as flows with the right fields, the
status shows every agent with its services, and the metrics a node serves pass the naming lint.

One lab per module (one node: client, other, server, kube-dns; one world host), taken down in a finalizer.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from metric_lint import lint_exposition

from l7.lab import Lab, down
from l7.lab.topology import parse_topology
from tests.observe.observe_lab import POLICIES, TOPOLOGY

pytestmark = pytest.mark.root

NAME = f"pxo{os.getpid() % 100000}"
REPO = Path(__file__).resolve().parents[2]


def l7gate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", "from l7.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    policy_dir = tmp_path_factory.mktemp("policies")
    (policy_dir / "policies.yaml").write_text(POLICIES)
    try:
        built = Lab.up(parse_topology(TOPOLOGY), NAME, policies=policy_dir)
        yield built
    finally:
        down(NAME)


def server_ip(lab: Lab) -> str:
    return next(ip for ip in lab.pod("server").ips if ":" not in ip)


@pytest.fixture(scope="module")
def traffic(lab: Lab) -> dict[str, subprocess.CompletedProcess[str]]:
    ip = server_ip(lab)
    runs = {
        "public": lab.exec("client", ["curl", "-s", "-m", "3", f"http://{ip}/public"]),
        "private": lab.exec("client", ["curl", "-s", "-m", "3", f"http://{ip}/private"]),
        "drop": lab.exec("other", ["curl", "-s", "-m", "1", f"http://{ip}/public"]),
        "dns_ok": lab.exec("client", ["dig", "+time=1", "+tries=1", "google.com", "A"]),
        "dns_refused": lab.exec("client", ["dig", "+time=1", "+tries=1", "naver.com", "A"]),
    }
    assert runs["public"].stdout == "public\n", runs["public"]
    assert "Access denied" in runs["private"].stdout, runs["private"]
    assert runs["drop"].returncode == 28, runs["drop"]
    assert "status: NOERROR" in runs["dns_ok"].stdout, runs["dns_ok"].stdout
    assert "status: REFUSED" in runs["dns_refused"].stdout, runs["dns_refused"].stdout
    return runs


def observe(*args: str) -> list[dict[str, Any]]:
    out = l7gate("observe", "--lab", NAME, "-o", "json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for(find: Callable[[], dict[str, Any] | None], what: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll until ``find`` returns a flow (Envoy flushes its access log on its own schedule)."""
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} flow within {timeout}s")
        time.sleep(0.3)


def first(flows: list[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    return next((f for f in flows if all(f.get(k) == v for k, v in want.items())), None)


def test_l3l4_drop_appears(lab: Lab, traffic: object) -> None:
    flow = wait_for(
        lambda: first(observe("--type", "l3l4", "--verdict", "denied"), src="default/other", dst_port=80),
        "L3/L4 drop",
    )
    assert flow["dst"] == "default/server"
    assert flow["dst_ip"] == server_ip(lab)
    assert flow["proto"] == "TCP"
    assert flow["reason"] == "policy-denied"
    assert flow["node"] == "n1"


def test_http_403_appears(lab: Lab, traffic: object) -> None:
    flow = wait_for(lambda: first(observe("--type", "http"), http_path="/private"), "HTTP 403")
    assert flow["verdict"] == "denied"
    assert flow["http_status"] == 403
    assert flow["http_method"] == "GET"
    assert flow["src"] == "default/client"
    assert flow["dst"] == "default/server"
    assert flow["dst_port"] == 80
    allowed = wait_for(lambda: first(observe("--type", "http"), http_path="/public"), "HTTP 200")
    assert (allowed["verdict"], allowed["http_status"]) == ("allowed", 200)


def test_dns_refused_appears(lab: Lab, traffic: object) -> None:
    flow = wait_for(
        lambda: first(observe("--type", "dns", "--verdict", "denied"), dns_qname="naver.com"), "DNS REFUSED"
    )
    assert flow["dns_rcode"] == "REFUSED"
    assert flow["dns_qtype"] == "A"
    assert flow["src"] == "default/client"
    assert flow["dst"] == "kube-system/kube-dns"
    assert "dns_ips" not in flow
    ok = wait_for(
        lambda: first(observe("--type", "dns"), dns_qname="google.com", dns_qtype="A"), "DNS answer"
    )
    assert ok["verdict"] == "allowed" and ok["dns_rcode"] == "NOERROR"
    google = lab.endpoints()["fqdns"]["google.com"]
    assert set(ok["dns_ips"]) <= set(google) and ok["dns_ips"]


def test_filters_and_table(lab: Lab, traffic: object) -> None:
    wait_for(lambda: first(observe("--type", "http"), http_path="/private"), "HTTP 403")
    assert all(f["type"] == "dns" for f in observe("--type", "dns"))
    only_other = observe("--pod", "other")
    assert only_other and all("default/other" in (f.get("src"), f.get("dst")) for f in only_other)
    assert len(observe("--last", "2")) == 2
    table = l7gate("observe", "--lab", NAME, "--type", "http", "--verdict", "denied").stdout
    line = next(line for line in table.splitlines() if "/private" in line)
    assert "default/client" in line and "default/server:80" in line and "DENIED" in line and "403" in line


def test_status(lab: Lab, traffic: object) -> None:
    data = json.loads(l7gate("status", "--lab", NAME, "-o", "json").stdout)
    (agent,) = data["agents"]
    assert agent["node"] == "n1" and agent["ready"] and agent["alive"]
    services = agent["services"]
    assert set(services) >= {"flows", "metrics"}
    assert services["flows"]["running"] and services["flows"]["events"] > 0
    assert services["metrics"]["serving"]
    dp = services["metrics"]["datapath"]
    assert dp["programs_attached"] == {"endpoint": 4, "uplink": 1}
    assert dp["maps"]["endpoints"]["entries"] == 4
    assert sorted(data["policies"]["accepted"]) == [
        "CiliumNetworkPolicy default/client-egress",
        "CiliumNetworkPolicy default/server-l7",
    ]
    table = l7gate("status", "--lab", NAME).stdout
    assert "n1" in table and "ready" in table and "2 accepted, 0 rejected" in table


def test_metrics_served_and_linted(lab: Lab, traffic: object) -> None:
    netns = lab.node_netns("n1")

    def scrape() -> str:
        proc = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{netns}",
                "curl",
                "-s",
                "-m",
                "3",
                "http://127.0.0.1:9962/metrics",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def has_drops() -> dict[str, Any] | None:
        text = scrape()
        return {"text": text} if 'l7gate_datapath_drops_total{reason="policy-denied"}' in text else None

    text = wait_for(has_drops, "metrics with drops")["text"]
    assert lint_exposition(text) == []
    assert "l7gate_agent_ready 1.0" in text
    assert 'l7gate_datapath_map_entries{map="endpoints"} 4.0' in text
    assert 'l7gate_dns_queries_total{rcode="REFUSED"}' in text
    assert "l7gate_xds_acks_total" in text and "l7gate_xds_convergence_seconds" in text


def test_flow_files_follow_the_contract(lab: Lab, traffic: object) -> None:
    agent_dir = lab.state.directory / "agent"
    line = (agent_dir / "flows-n1-l3l4.jsonl").read_text().splitlines()[0]
    record = json.loads(line)
    assert {"time", "verdict", "reason", "src", "dst", "sport", "dport", "proto"} <= set(record)
    assert abs(record["time"] - time.time()) < 600
    assert yaml.safe_load(line) == record


def test_follow_prints_new_flows(lab: Lab, traffic: object) -> None:
    argv = [sys.executable, "-c", "from l7.cli import main; main()", "observe", "--lab", NAME, "--follow"]
    argv += ["--type", "dns", "--pod", "client", "--last", "1", "-o", "json"]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
    ) as proc:
        try:
            assert proc.stdout is not None
            json.loads(proc.stdout.readline())  # the last flow so far
            name = f"follow-{os.getpid()}.example"
            lab.exec("client", ["dig", "+time=1", "+tries=1", name, "A"])
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(
                target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True
            ).start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    flow = json.loads(lines.get(timeout=max(0.01, deadline - time.monotonic())))
                except queue.Empty:
                    break
                if flow.get("dns_qname") == name:
                    assert flow["dns_rcode"] == "REFUSED" and flow["src"] == "default/client"
                    return
            raise AssertionError("the new query did not show up in --follow")
        finally:
            proc.terminate()
            proc.wait(10)
