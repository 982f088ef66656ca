"""The topology model, the addressing plan and the DNS configuration: pure, no root needed."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from l7.lab import TopologyError, load_topology, parse_topology
from l7.lab.addressing import plan
from l7.lab.dns import cluster_names, dnsmasq_conf, resolv_conf

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "lab"


@pytest.mark.parametrize("name", ["seed-002.yaml", "fqdn.yaml"])
def test_shipped_topologies_parse(name: str) -> None:
    topo = load_topology(DEPLOY / name)
    p = plan(topo, "l7gate", 0)
    assert len({pod.v4 for pod in p.pods}) == len(p.pods)
    assert dnsmasq_conf(topo, p)


def test_seed_002_has_the_posts_workloads() -> None:
    topo = load_topology(DEPLOY / "seed-002.yaml")
    names = {pod.name for pod in topo.pods}
    assert {
        "service-pod",
        "client-prod",
        "client-dev",
        "dev-pod",
        "webpod-1",
        "webpod-2",
        "mediabot",
    } <= names
    assert {n.name for n in topo.nodes} == {"k8s-ctr", "k8s-w1", "k8s-w2"}
    assert next(p for p in topo.pods if p.name == "dev-pod").node == "k8s-w1"
    assert topo.dns_pod().labels["k8s-app"] == "kube-dns"
    assert topo.dns_pod().namespace == "kube-system"


def test_errors_carry_field_paths_and_are_all_reported() -> None:
    doc = {
        "nodes": [{"name": "n1"}],
        "pods": [
            {"name": "a", "node": "nope"},
            {"name": "b", "server": {"kind": "whoami", "paths": {"/x": "y"}}},
            {"name": "c", "bogus": 1},
        ],
        "services": [{"name": "s", "selector": {"app": "none"}}],
        "world": [{"name": "w", "ipv4": ["8.8.8.8"]}],
        "dns": {"records": [{"name": "*.x.example.com", "cname": "y.example.com"}]},
    }
    with pytest.raises(TopologyError) as info:
        parse_topology(doc, "t.yaml")
    paths = {issue.path for issue in info.value.issues}
    assert "pods[2].bogus" in paths
    assert "pods[1].server" in paths
    assert "world[0].ipv4[0]" in paths
    assert "dns.records[0]" in paths
    # cross-reference checks run only once the schema is valid
    doc2 = {"nodes": [{"name": "n1"}, {"name": "n2"}], "pods": [{"name": "a", "node": "nope"}, {"name": "b"}]}
    with pytest.raises(TopologyError) as info2:
        parse_topology(doc2)
    assert {i.path for i in info2.value.issues} == {"pods[0].node", "pods[1].node"}


def test_world_addresses_must_be_private_and_outside_the_lab_ranges() -> None:
    for bad in (["1.1.1.1"], ["10.200.250.1"], ["127.0.0.1"]):
        with pytest.raises(TopologyError):
            parse_topology({"nodes": [{"name": "n"}], "world": [{"name": "w", "ipv4": bad}]})
    with pytest.raises(TopologyError):
        parse_topology({"nodes": [{"name": "n"}], "world": [{"name": "w", "ipv6": ["2001:db8::1"]}]})
    parse_topology({"nodes": [{"name": "n"}], "world": [{"name": "w", "ipv4": ["192.0.2.7"]}]})


def test_labs_get_disjoint_address_blocks() -> None:
    topo = load_topology(DEPLOY / "seed-002.yaml")
    a, b = plan(topo, "a", 0), plan(topo, "b", 1)
    ips_a = {ipaddress.ip_address(ip) for p in a.pods for ip in p.ips}
    ips_b = {ipaddress.ip_address(ip) for p in b.pods for ip in p.ips}
    assert not ips_a & ips_b
    assert not set(a.all_netns) & set(b.all_netns)
    for p in a.pods:
        assert len(p.host_if) <= 15


def test_same_pod_name_in_two_namespaces_gets_two_namespaces() -> None:
    topo = parse_topology(
        {"nodes": [{"name": "n"}], "pods": [{"name": "x"}, {"name": "x", "namespace": "other"}]}
    )
    p = plan(topo, "lab", 0)
    assert {pp.netns for pp in p.pods if pp.name == "x"} == {"l7g-lab-default-x", "l7g-lab-other-x"}
    names = cluster_names(topo, p)
    assert "x" not in names  # ambiguous short name: only NAME.NAMESPACE forms
    assert "x.other.svc.cluster.local" in names


def test_resolv_conf() -> None:
    text = resolv_conf("10.200.1.10", "demo")
    assert "nameserver 10.200.1.10\n" in text
    assert "search demo.svc.cluster.local svc.cluster.local cluster.local\n" in text
    assert "options ndots:5\n" in text


def test_readme_example_is_a_valid_topology() -> None:
    text = (DEPLOY / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("yaml\n")]
    assert blocks
    for block in blocks:
        topo = parse_topology(yaml.safe_load(block), "README.md")
        plan(topo, "readme", 0)
