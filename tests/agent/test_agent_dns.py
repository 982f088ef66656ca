"""DNS policies end to end: the lab of ``deploy/lab/fqdn.yaml`` (seeds 000, 001, 003) with its node agent
running the DNS proxy; real dnsmasq as kube-dns, real dig and curl in the pods.

Covers the seed policies verbatim (allowed names resolve and connect on the allowed port, other names
get REFUSED where a DNS rule applies, connections to names not allowed time out, ``*.github.com`` style
patterns), DNS over TCP, 0x20 mixed-case names, IPv6 (AAAA answers allow IPv6 connections), CNAME
chains, a DNS server the policy does not allow (dropped at L3/L4), an answer carrying a record for
another name (not credited), and the DNS flow log.

One lab per module (unique name, taken down in a finalizer). The FQDN cache is node-wide (as in
Cilium), so each test uses names no earlier test resolves where that matters.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from l7.fqdn_state import read_state
from l7.lab import Lab, down
from l7.lab.topology import parse_topology
from tests.agent.fqdn_helpers import (
    CURL_TIMEOUT,
    DIG_NO_SERVER,
    LAB_FILES,
    ROGUE_DNS,
    agent_status,
    apply,
    cnp,
    curl,
    dig,
    dns_to,
    seed,
    status_of,
)

pytestmark = pytest.mark.root

NAME = f"dxd{os.getpid() % 100000}"
ROGUE_CONF = Path(f"/tmp/{NAME}-rogue.json")
NODE = "node-1"


def topology() -> dict[str, Any]:
    topo: dict[str, Any] = yaml.safe_load((LAB_FILES / "fqdn.yaml").read_text())
    topo["dns"].setdefault("labels", {})["app.kubernetes.io/name"] = "kube-dns"  # seed 001's selector
    topo["pods"] += [
        {"name": "probe", "namespace": "demo", "labels": {"app": "probe"}},
        {
            "name": "rogue-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "rogue-dns"},
            "commands": [["python3", "-I", "-c", ROGUE_DNS, str(ROGUE_CONF)]],
        },
    ]
    topo["world"].append({"name": "bystander", "names": ["bystander.test"]})
    return topo


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    started = time.monotonic()
    try:
        built = Lab.up(parse_topology(topology(), "<test_agent_dns>"), NAME)
        print(f"lab up with agents: {time.monotonic() - started:.2f}s")
        yield built
    finally:
        down(NAME)
        ROGUE_CONF.unlink(missing_ok=True)


def world(lab: Lab, name: str, family: int = 4) -> str:
    return next(ip for ip in lab.plan.world(name).ips if (":" in ip) == (family == 6))


def run_all(checks: dict[Any, Callable[[], Any]]) -> dict[Any, Any]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {k: pool.submit(f) for k, f in checks.items()}
        return {k: f.result() for k, f in futures.items()}


def saved_cache(lab: Lab, name: str, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's saved FQDN cache (snapshot + journals) once it holds ``name`` (journaled about once
    a second)."""
    path = lab.state.directory / "agent" / f"fqdn-cache-{NODE}.json"
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, Any] = read_state(path) or {}
        if name in data.get("names", {}) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def answers(text: str) -> list[str]:
    return [line.split()[-1] for line in text.splitlines() if line and not line.startswith(";")]


# --------------------------------------------------------------------------------------------- tests
def test_seed_000_demo_policy(lab: Lab, tmp_path: Path) -> None:
    """google.com resolves and connects on 443 only; other names are REFUSED; other hosts time out."""
    apply(NAME, tmp_path, seed("000-demo-policy", "demo"))
    rc, out = dig(lab, "demo/demo-app", "+short", "google.com")
    assert rc == 0 and answers(out) == [world(lab, "google")], out
    rc, out = dig(lab, "demo/demo-app", "github.com")
    assert status_of(out) == "REFUSED", out
    results = run_all(
        {
            "https google": lambda: curl(lab, "demo/demo-app", "https://google.com"),
            "http google": lambda: curl(lab, "demo/demo-app", "http://google.com"),
            "https github ip": lambda: curl(lab, "demo/demo-app", f"https://{world(lab, 'github')}"),
            "other pod": lambda: curl(lab, "demo/curl", "https://google.com"),  # not selected
        }
    )
    assert results == {
        "https google": 0,
        "http google": CURL_TIMEOUT,
        "https github ip": CURL_TIMEOUT,
        "other pod": 0,
    }
    # the flow log has both outcomes, with the endpoint
    log = (lab.state.directory / "agent" / f"flows-{NODE}-dns.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in log]
    refused = [e for e in events if e["qname"] == "github.com" and e["endpoint"] == "demo/demo-app"]
    assert refused and refused[-1]["verdict"] == "refused" and refused[-1]["rcode"] == 5
    allowed = [e for e in events if e["qname"] == "google.com" and e["verdict"] == "allowed"]
    assert allowed and allowed[-1]["ips"][0][0] in lab.plan.world("google").ips
    assert set(allowed[-1]) >= {"time", "source_ip", "source_port", "server_ip", "server_port", "protocol"}


def test_dns_over_tcp_and_mixed_case(lab: Lab, tmp_path: Path) -> None:
    apply(NAME, tmp_path, seed("000-demo-policy", "demo"))
    rc, out = dig(lab, "demo/demo-app", "+tcp", "+short", "google.com")
    assert rc == 0 and answers(out) == [world(lab, "google")], out
    rc, out = dig(lab, "demo/demo-app", "+tcp", "github.com")
    assert status_of(out) == "REFUSED", out
    rc, out = dig(lab, "demo/demo-app", "GoOgLe.CoM.")  # 0x20: the question comes back as asked
    assert status_of(out) == "NOERROR" and "GoOgLe.CoM." in out and world(lab, "google") in out, out
    rc, out = dig(lab, "demo/demo-app", "GiThUb.CoM")
    assert status_of(out) == "REFUSED", out


def test_ipv6_answers_allow_ipv6(lab: Lab, tmp_path: Path) -> None:
    apply(NAME, tmp_path, seed("000-demo-policy", "demo"))
    google6 = world(lab, "google", 6)
    rc, out = dig(lab, "demo/demo-app", "+short", "AAAA", "google.com")
    assert rc == 0 and answers(out) == [google6], out
    results = run_all(
        {
            "v6 google": lambda: curl(lab, "demo/demo-app", f"https://[{google6}]/"),
            "v6 github": lambda: curl(lab, "demo/demo-app", f"https://[{world(lab, 'github', 6)}]/"),
            "v6 by name": lambda: curl(lab, "demo/demo-app", "https://google.com", "-6"),
        }
    )
    assert results == {"v6 google": 0, "v6 github": CURL_TIMEOUT, "v6 by name": 0}


def test_query_to_a_server_not_allowed_is_dropped(lab: Lab, tmp_path: Path) -> None:
    """demo-policy allows DNS to kube-dns only: a query to another DNS server never gets an answer."""
    apply(NAME, tmp_path, seed("000-demo-policy", "demo"))
    ROGUE_CONF.write_text(
        json.dumps({"ip": world(lab, "google"), "other_name": "x.test", "other_ip": "1.2.3.4"})
    )
    rogue = lab.pod("kube-system/rogue-dns").ips[0]
    rc, out = dig(lab, "demo/curl", f"@{rogue}", "google.com")  # the server answers when allowed
    assert rc == 0 and status_of(out) == "NOERROR", out
    rc, out = dig(lab, "demo/demo-app", f"@{rogue}", "google.com")
    assert rc == DIG_NO_SERVER, out
    rc, out = dig(lab, "demo/demo-app", "+tcp", f"@{rogue}", "google.com")
    assert rc == DIG_NO_SERVER, out


def test_seed_003_patterns(lab: Lab, tmp_path: Path) -> None:
    """demo: DNS for every pod (``*``), app=client may reach example.com, api.example.com, google.com,
    ``*.google.com`` and ``*.github.com`` on 443 (``*.github.com`` does not match github.com itself)."""
    apply(
        NAME,
        tmp_path,
        seed("003-allow-dns"),
        seed("003-allow-egress-to-specific-domain"),
        seed("003-allow-egress-to-specific-domain-2"),
    )
    want = {
        "https://www.google.com": 0,
        "https://api.github.com": 0,
        "https://support.github.com": 0,
        "https://example.com": 0,
        "https://api.example.com": 0,
        "https://github.com": CURL_TIMEOUT,  # resolves (DNS allows *), not reachable
        "https://naver.com": CURL_TIMEOUT,
        "http://example.com": CURL_TIMEOUT,  # 443 only
    }
    checks: dict[Any, Callable[[], Any]] = {url: lambda url=url: curl(lab, "demo/curl", url) for url in want}
    checks["demo-app"] = lambda: curl(lab, "demo/demo-app", "https://example.com")  # only DNS allowed
    results = run_all(checks)
    assert results == {**want, "demo-app": CURL_TIMEOUT}
    _rc, out = dig(lab, "demo/demo-app", "+short", "github.com")  # matchPattern "*": any name
    assert answers(out) == [world(lab, "github")], out


def test_seed_001_policies(lab: Lab, tmp_path: Path) -> None:
    """fqdn-lab with all of seed 001: default deny, DNS via ``app.kubernetes.io/name: kube-dns``, L3
    toFQDNs (every port) per app, and 443 to anyone (a separate rule in those policies)."""
    names = (
        "001-default-deny",
        "001-allow-dns",
        "001-allow-saas-only",
        "001-allow-specific-fqdns",
        "001-allow-subdomains",
        "001-allow-organization-domains",
        "001-myapp-fqdn-policy",
    )
    apply(NAME, tmp_path, *(seed(n) for n in names))
    # As written, allow-dns's toEndpoints has no namespace label, so in a namespaced policy it selects
    # kube-dns pods of fqdn-lab only (Cilium's rule): the cluster DNS in kube-system is not reachable.
    rc, out = dig(lab, "fqdn-lab/payments", "slack.com")
    assert rc == DIG_NO_SERVER, out
    # With the selector naming kube-system too, the seed's FQDN rules do their work.
    fixed = seed("001-allow-dns")
    fixed["metadata"]["name"] = "allow-dns-kube-system"
    fixed["spec"]["egress"][0]["toEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"] = (
        "kube-system"
    )
    apply(NAME, tmp_path, *(seed(n) for n in names), fixed)
    want = {
        ("fqdn-lab/payments", "http://api.stripe.com"): 0,
        ("fqdn-lab/payments", "http://slack.com"): 0,
        ("fqdn-lab/payments", "http://api.github.com"): 0,
        ("fqdn-lab/payments", "http://naver.com"): CURL_TIMEOUT,
        ("fqdn-lab/payments", "https://naver.com"): 0,  # toPorts 443 from any peer
        ("fqdn-lab/tbox", "http://intranet.corp.example.com"): 0,
        ("fqdn-lab/tbox", "http://anything.corp.example.com"): 0,
        ("fqdn-lab/tbox", "http://api.example.com"): 0,
        ("fqdn-lab/tbox", "http://www.google.com"): 0,
        ("fqdn-lab/tbox", "http://example.com"): CURL_TIMEOUT,  # *.example.com: not example.com
        ("fqdn-lab/tbox", "http://api.stripe.com"): CURL_TIMEOUT,  # payments only
    }
    results = run_all({k: lambda k=k: curl(lab, k[0], k[1]) for k in want})
    assert results == want


def test_cname_chain(lab: Lab, tmp_path: Path) -> None:
    """www.naver.com is a CNAME of naver.com: the A record at the end of the chain is credited to the
    name asked, so ``matchName: www.naver.com`` allows naver.com's address."""
    apply(
        NAME,
        tmp_path,
        cnp(
            "cname",
            "demo",
            {
                "endpointSelector": {"matchLabels": {"app": "probe"}},
                "egress": [
                    dns_to("kube-dns"),
                    {"toFQDNs": [{"matchName": "www.naver.com"}], "toPorts": [{"ports": [{"port": "443"}]}]},
                ],
            },
        ),
    )
    _rc, out = dig(lab, "demo/probe", "www.naver.com")
    assert "CNAME" in out and world(lab, "naver") in out, out
    assert curl(lab, "demo/probe", "https://www.naver.com") == 0
    cache = saved_cache(lab, "www.naver.com")
    assert world(lab, "naver") in [row[0] for row in cache["names"]["www.naver.com"]]
    assert cache["selectors"]["www.naver.com"] == ["www.naver.com"]
    assert "naver.com" not in cache["names"]


def test_records_for_other_names_are_not_credited(lab: Lab, tmp_path: Path) -> None:
    """A server answering ``evil.test`` with an extra A record for ``bystander.test`` does not make that
    address reachable for a policy allowing bystander.test; asking for bystander.test itself does."""
    bystander = world(lab, "bystander")
    ROGUE_CONF.write_text(
        json.dumps({"ip": world(lab, "example"), "other_name": "bystander.test", "other_ip": bystander})
    )
    apply(
        NAME,
        tmp_path,
        cnp(
            "other-names",
            "demo",
            {
                "endpointSelector": {"matchLabels": {"app": "probe"}},
                "egress": [
                    dns_to("kube-dns", "rogue-dns"),
                    {"toFQDNs": [{"matchName": "bystander.test"}], "toPorts": [{"ports": [{"port": "80"}]}]},
                ],
            },
        ),
    )
    rogue = lab.pod("kube-system/rogue-dns").ips[0]
    _rc, out = dig(lab, "demo/probe", f"@{rogue}", "evil.test")
    assert status_of(out) == "NOERROR" and "bystander.test." in out and bystander in out, out
    assert curl(lab, "demo/probe", f"http://{bystander}/") == CURL_TIMEOUT
    _rc, out = dig(lab, "demo/probe", "+short", "bystander.test")
    assert answers(out) == [bystander], out
    assert curl(lab, "demo/probe", f"http://{bystander}/") == 0
    status = agent_status(lab, NODE)["services"]["dns"]
    assert status["refused_source"] == 0 and status["slow"] >= 1, status


def test_flow_established_before_the_dns_rule_goes_through_the_proxy(lab: Lab, tmp_path: Path) -> None:
    """A pod that queried kube-dns before any policy (its UDP flow allowed in conntrack) gets REFUSED
    on the *same* source port once a DNS rule applies: the policy change re-decides established flows
    (the revision in conntrack), so no query slips past the proxy."""
    apply(NAME, tmp_path)  # no policy: DNS goes straight to kube-dns
    bind = ("-b", f"{lab.pod('demo/probe').ips[0]}#40053")
    rc, out = dig(lab, "demo/probe", *bind, "github.com")
    assert status_of(out) == "NOERROR", out
    probe_dns = cnp(
        "probe-dns",
        "demo",
        {
            "endpointSelector": {"matchLabels": {"app": "probe"}},
            "egress": [dns_to("kube-dns", pattern="google.com")],
        },
    )
    apply(NAME, tmp_path, probe_dns)
    rc, out = dig(lab, "demo/probe", *bind, "github.com")
    assert status_of(out) == "REFUSED", out
    rc, out = dig(lab, "demo/probe", *bind, "+short", "google.com")
    assert rc == 0 and answers(out) == [world(lab, "google")], out


def test_audit_mode_forwards_names_no_rule_allows(lab: Lab, tmp_path: Path) -> None:
    """An endpoint in audit mode gets the answer for a name its DNS rules do not allow; the flow log
    says ``audit``. Out of audit mode the same query is REFUSED again."""
    apply(NAME, tmp_path, seed("000-demo-policy", "demo"))
    path = lab.state.directory / "endpoints.json"
    original = path.read_text()

    def set_audit(on: bool) -> None:
        data = json.loads(original)
        for ep in data["endpoints"]:
            if (ep.get("namespace"), ep["name"]) == ("demo", "demo-app"):
                ep["policyAuditMode"] = on
        before = agent_status(lab, NODE)["generation"]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
        deadline = time.monotonic() + 10
        while agent_status(lab, NODE)["generation"] == before:
            assert time.monotonic() < deadline, "the agent did not apply the endpoints file"
            time.sleep(0.1)

    try:
        set_audit(True)
        flows = lab.state.directory / "agent" / f"flows-{NODE}-dns.jsonl"
        seen = len(flows.read_text().splitlines()) if flows.exists() else 0  # earlier tests' records
        rc, out = dig(lab, "demo/demo-app", "+short", "github.com")
        assert rc == 0 and answers(out) == [world(lab, "github")], out
        mine: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5  # the DNS flow records are written in batches (every 10 ms)
        while not mine and time.monotonic() < deadline:
            log = flows.read_text().splitlines()[seen:] if flows.exists() else []
            mine = [json.loads(x) for x in log if '"github.com"' in x and "demo/demo-app" in x]
            time.sleep(0.05)
        assert mine and mine[-1]["verdict"] == "audit", mine[-1:]
        set_audit(False)
        rc, out = dig(lab, "demo/demo-app", "github.com")
        assert status_of(out) == "REFUSED", out
    finally:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(original)
        tmp.replace(path)
