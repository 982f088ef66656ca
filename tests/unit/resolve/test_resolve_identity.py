"""Identities, selectors, the endpoints file, incremental resolution and the CLI."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from resolve_helpers import ENDPOINTS, SEEDS, policies, seed_002, seeds
from typer.testing import CliRunner

import l7.identity
from l7.cli import app
from l7.cli import trace_cmd as _trace_cmd  # noqa: F401  (registers `policy trace`)
from l7.endpoints import EndpointsError, build_topology, load_endpoints_text
from l7.identity import CLUSTER_MIN, LOCAL_MIN, IdentityAllocator, ReservedIdentity
from l7.labels import Label, LabelSet, k8s_labels
from l7.policy import model
from l7.resolve import Resolver, resolve
from l7.selectors import EntitySelector, label_selector

WEB = k8s_labels({"app": "web"}, namespace="default")
DB = k8s_labels({"app": "db"}, namespace="prod", service_account="db")


def test_pod_identity_labels() -> None:
    assert set(DB.strings()) == {
        "k8s:app=db",
        "k8s:io.kubernetes.pod.namespace=prod",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod",
        "k8s:io.cilium.k8s.policy.serviceaccount=db",
        "k8s:io.cilium.k8s.policy.cluster=default",
    }


def test_reserved_identities() -> None:
    allocator = IdentityAllocator()
    assert allocator.lookup(1) == LabelSet((Label("reserved", "host"),))
    assert allocator.get(ReservedIdentity.WORLD_IPV6).labels.strings() == ("reserved:world-ipv6",)
    assert allocator.get(7).labels.strings() == ("reserved:kube-apiserver",)


def test_identities_stable_across_restarts_and_order() -> None:
    first, second = IdentityAllocator(), IdentityAllocator()
    a = [first.allocate(WEB).id, first.allocate(DB).id]
    b = [second.allocate(DB).id, second.allocate(WEB).id]
    assert a == b[::-1] and all(CLUSTER_MIN <= i <= 65535 for i in a)
    cidr = first.cidr_identity(ipaddress.ip_network("10.0.0.0/8"))
    assert cidr.id >= LOCAL_MIN and "cidr:10.0.0.0/8" in cidr.labels.strings()
    assert second.cidr_identity(ipaddress.ip_network("10.0.0.0/8")).id == cidr.id


def test_collisions_keep_ids_with_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(l7.identity, "_preferred", lambda labels, lo, hi: lo)  # everything collides
    first = IdentityAllocator()
    web, db = first.allocate(WEB).id, first.allocate(DB).id
    assert (web, db) == (CLUSTER_MIN, CLUSTER_MIN + 1)
    state = tmp_path / "identities.json"
    first.save(state)
    restarted = IdentityAllocator.load(state)
    assert (restarted.allocate(DB).id, restarted.allocate(WEB).id) == (db, web)
    assert IdentityAllocator().allocate(DB).id == CLUSTER_MIN  # without state: order decides


def test_fqdn_identity() -> None:
    allocator = IdentityAllocator()
    prefixes = [ipaddress.ip_network("140.82.0.0/16"), ipaddress.ip_network("140.82.112.0/20")]
    ip = ipaddress.ip_address("140.82.112.5")
    identity = allocator.fqdn_identity(["api.github.com", "*.github.com"], ip, prefixes)
    assert identity.id >= LOCAL_MIN
    assert set(identity.labels.strings()) == {
        "fqdn:api.github.com",
        "fqdn:*.github.com",
        "reserved:world",
        "reserved:world-ipv4",
        "cidr:140.82.112.0/20",
    }
    assert allocator.fqdn_identity(["*.github.com", "api.github.com"], ip, prefixes) == identity
    assert allocator.fqdn_identity([], ipaddress.ip_address("9.9.9.9")).id == ReservedIdentity.WORLD_IPV4
    assert EntitySelector("world").matches(identity.labels)
    assert not EntitySelector("cluster").matches(identity.labels)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"matchLabels": {"k8s:app": "web"}}, WEB, True),
        ({"matchLabels": {"any:app": "web"}}, WEB, True),
        ({"matchLabels": {"app": "web"}}, WEB, True),
        ({"matchLabels": {"reserved:app": "web"}}, WEB, False),
        ({"matchLabels": {"reserved:host": ""}}, LabelSet((Label("reserved", "host"),)), True),
        ({"matchLabels": {"k8s:host": ""}}, LabelSet((Label("reserved", "host"),)), False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}, WEB, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, WEB, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}, WEB, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, WEB, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, WEB, False),
    ],
)
def test_label_selector(selector: dict[str, object], labels: LabelSet, expected: bool) -> None:
    assert label_selector(model.EndpointSelector.model_validate(selector)).matches(labels) is expected


def test_endpoints_file_errors_have_paths() -> None:
    text = "endpoints:\n- name: a\n  ips: [10.0.0.300]\n  colour: red\nnodes: [{name: n, ips: [x]}]\n"
    with pytest.raises(EndpointsError) as info:
        load_endpoints_text(text, "eps.yaml")
    paths = {p for p, _ in info.value.problems}
    assert {"endpoints[0].ips", "endpoints[0].colour", "nodes[0].ips"} <= paths


def test_incremental_equals_full() -> None:
    names = [
        "002-allow-public-from-prod",
        "002-default-deny-dev",
        "002-dev-to-host",
        "002-fqdn",
        "002-l7-rule",
    ]
    before = list(seeds(*names))
    allocator = IdentityAllocator()
    topology = build_topology(seed_002(), allocator)
    resolver = Resolver(allocator, "k8s-w1")
    resolver.resolve(before, topology)
    pairs = resolver.stats.pairs
    endpoints = len(resolver.resolve(before, topology).endpoints)
    assert resolver.stats.pairs == pairs  # nothing changed: nothing recomputed
    changed = policies(
        (SEEDS / "002-allow-public-from-prod.yaml").read_text().replace('path: "/public"', 'path: "/public2"')
    )[0]
    after = [changed if p.key == changed.key else p for p in before]
    incremental = resolver.resolve(after, topology)
    assert resolver.stats.pairs == pairs + endpoints  # one policy × the node's endpoints
    fresh_allocator = IdentityAllocator()
    full = resolve(after, build_topology(seed_002(), fresh_allocator), fresh_allocator, "k8s-w1")
    assert incremental == full


def test_cli_trace_json_and_exit_codes() -> None:
    runner = CliRunner()
    base = [
        "policy",
        "trace",
        "--policies",
        str(SEEDS / "002-allow-public-from-prod.yaml"),
        "--endpoints",
        str(ENDPOINTS / "seed-002.yaml"),
        "--to",
        "service-pod",
        "--port",
        "80/TCP",
    ]
    ok = runner.invoke(app, [*base, "--from", "client-prod", "--http", "GET", "/public", "--output", "json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert (data["verdict"], data["layer"], data["policy"], data["rule"]) == (
        "allowed",
        "http",
        "CiliumNetworkPolicy/default/allow-public-from-prod",
        "spec.ingress[0].toPorts[0].rules.http[0]",
    )
    assert data["directions"]["egress"]["reason"] == "no-policy"
    denied = runner.invoke(app, [*base, "--from", "client-prod", "--http", "GET", "/private"])
    assert denied.exit_code == 1 and "403" in denied.stdout
    l3 = runner.invoke(app, [*base, "--from", "client-dev", "--output", "json"])
    assert l3.exit_code == 1 and json.loads(l3.stdout)["layer"] == "l3l4"
    usage = runner.invoke(app, [*base, "--from", "nobody"])
    assert usage.exit_code == 2
    bad_port = runner.invoke(app, [*base[:-1], "80/XYZ", "--from", "client-prod"])
    assert bad_port.exit_code == 2
