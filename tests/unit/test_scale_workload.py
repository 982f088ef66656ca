"""The issue-12 scale workload generator (tests/bench/scale_workload.py): the quick workload is
deterministic, every policy validates (also written one per file and loaded as the agent loads them),
the endpoints file parses, and the learned names are selected by the ``toFQDNs`` patterns."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from l7.endpoints import load_endpoints
from l7.policy.fqdn import match_pattern
from tests.bench import scale_workload as sw


def test_quick_workload_validates_and_parses(tmp_path: Path) -> None:
    workload = sw.generate(sw.QUICK)
    assert workload == sw.generate(sw.QUICK)  # same seed, same workload

    policies = sw.policies(workload)
    assert len(policies) == sw.QUICK.policies
    kinds = {p.name.split("-")[0] for p in policies}
    assert kinds == {"l4", "http", "dns"}

    paths = sw.write(workload, tmp_path)
    assert len(list(paths.policies.glob("*.yaml"))) == sw.QUICK.policies
    assert len(sw.load_policies(paths.policies)) == sw.QUICK.policies

    file = load_endpoints(paths.endpoints)
    assert file == sw.endpoints(workload)
    assert len(file.endpoints) == sw.QUICK.endpoints + 2  # + two kube-dns pods
    local = [e for e in file.endpoints if e.node == sw.QUICK.local_node]
    assert len(local) == sw.QUICK.endpoints // sw.QUICK.nodes
    for e in file.endpoints:
        assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.0.0.0/8") for ip in e.ips)

    changed = sw.changed_http_policy(workload, 0)
    assert sw.load_policies_text(sw.dump_policy(changed))[0].name == changed["metadata"]["name"]


def test_learned_ips_are_test_addresses_selected_by_the_policies() -> None:
    workload = sw.generate(sw.QUICK)
    by_ip = sw.learned_by_ip(workload)
    assert len(by_ip) == sw.QUICK.learned_ips
    for ip in by_ip:
        addr = ipaddress.ip_address(ip)
        assert addr in sw.V4_WORLD or addr in sw.V6_WORLD
    patterns = {
        match_pattern(sel["matchPattern"])
        for doc in workload.documents
        for rule in doc["spec"].get("egress", ())
        for sel in rule.get("toFQDNs", ())
        if "matchPattern" in sel
    }
    for name in workload.learned:
        assert any(p.matches(name) for p in patterns), name
    state = sw.fqdn_cache_state(workload, now=1000.0)
    assert sum(len(rows) for rows in state["names"].values()) == sw.QUICK.learned_ips
