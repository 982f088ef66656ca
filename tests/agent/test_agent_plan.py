"""plan(): real resolution of seed policies and inline ones → the decisions the datapath gets."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from agent_helpers import FakeDatapath, policies, seed_002, seeds

from bpf.maps import Action, Direction
from bpf.policy_entries import PolicyDecision, lookup, policy_entries
from l7.agent.sync import sync
from l7.endpoints import EndpointsFile, build_topology
from l7.identity import IdentityAllocator, ReservedIdentity
from l7.plan import DesiredState, PlanError, ProxyPorts, l7_unions, plan
from l7.policy.documents import Policy
from l7.resolve import ResolvedNode, Resolver

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


def resolve(
    pols: tuple[Policy, ...], node: str = "k8s-w1", file: EndpointsFile | None = None
) -> ResolvedNode:
    allocator = IdentityAllocator()
    topology = build_topology(file or seed_002(), allocator)
    return Resolver(allocator, node).resolve(pols, topology)


def interfaces(resolved: ResolvedNode) -> dict[str, int]:
    return {r.endpoint.key: 100 + i for i, r in enumerate(resolved.endpoints)}


def desired(resolved: ResolvedNode, ports: ProxyPorts | None = None) -> DesiredState:
    ports = ports or ProxyPorts()
    ports.assign(l7_unions(resolved))
    return plan(resolved, interfaces(resolved), ports.ports)


def ep_id(resolved: ResolvedNode, name: str) -> int:
    return interfaces(resolved)[f"default/{name}"]


def test_no_policy_nothing_enforced() -> None:
    r = resolve(())
    d = desired(r)
    assert d.endpoints and all(not e.ingress_enforced and not e.egress_enforced for e in d.endpoints.values())
    assert all(not ds for ds in d.policy.values())
    # ipcache: world, nodes, every pod; local pods carry their endpoint id
    assert d.ipcache[ipaddress.ip_network("0.0.0.0/0")].identity == ReservedIdentity.WORLD_IPV4
    assert d.ipcache[ipaddress.ip_network("::/0")].identity == ReservedIdentity.WORLD_IPV6
    assert d.ipcache[ipaddress.ip_network("192.168.10.101/32")].identity == ReservedIdentity.HOST
    remote_node = d.ipcache[ipaddress.ip_network("192.168.10.102/32")].identity
    labels = {i.id: i.labels for i in r.identities}[remote_node]
    assert "reserved:remote-node" in labels.strings()
    svc = d.ipcache[ipaddress.ip_network("172.20.1.10/32")]
    assert svc.endpoint_id == ep_id(r, "service-pod")
    remote = d.ipcache[ipaddress.ip_network("172.20.2.48/32")]  # webpod-1 on k8s-w2
    assert remote.endpoint_id == 0 and remote.identity > 255


def test_seed_002_allow_public_from_prod_redirects_prod_only() -> None:
    r = resolve(seeds("002-allow-public-from-prod"))
    d = desired(r)
    svc = ep_id(r, "service-pod")
    assert d.endpoints[svc].ingress_enforced and not d.endpoints[svc].egress_enforced
    prod = r.endpoint("default/client-prod").endpoint.identity
    dev = build_topology(seed_002(), IdentityAllocator()).find("client-dev")
    assert dev is not None
    (rule_set,) = r.http_rule_sets
    (key,) = l7_unions(r)
    assert l7_unions(r)[key] == (rule_set,)
    port = ProxyPorts()
    port.assign([key])
    assert d.policy[svc] == (
        PolicyDecision(Direction.INGRESS, prod, TCP, 80, 80, Action.REDIRECT, port.ports[key]),
    )
    entries = policy_entries(d.policy[svc])
    assert lookup(entries, Direction.INGRESS, prod, TCP, 80)[0] == Action.REDIRECT
    assert lookup(entries, Direction.INGRESS, prod, TCP, 81)[0] == Action.DENY
    assert lookup(entries, Direction.INGRESS, dev.identity, TCP, 80)[0] == Action.DENY
    # the clients themselves are not selected
    assert not d.policy[ep_id(r, "client-prod")]


def test_seed_002_dev_to_host_is_l3_any_protocol() -> None:
    r = resolve(seeds("002-default-deny-dev", "002-dev-to-host"))
    d = desired(r)
    dev = ep_id(r, "dev-pod")
    assert d.endpoints[dev].egress_enforced and not d.endpoints[dev].ingress_enforced
    assert d.policy[dev] == (PolicyDecision(Direction.EGRESS, int(ReservedIdentity.HOST), None),)
    entries = policy_entries(d.policy[dev])
    assert lookup(entries, Direction.EGRESS, 1, ICMP, 8)[0] == Action.ALLOW
    assert lookup(entries, Direction.EGRESS, 6, ICMP, 8)[0] == Action.DENY
    r2 = resolve(seeds("002-default-deny-dev", "002-dev-to-host", "002-dev-to-remote-node"))
    remote = {i.id for i in r2.identities if "reserved:remote-node" in i.labels.strings()}
    assert ReservedIdentity.REMOTE_NODE in remote
    assert set(desired(r2).policy[dev]) == {
        PolicyDecision(Direction.EGRESS, peer, None) for peer in {int(ReservedIdentity.HOST), *remote}
    }


L7_UNION = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: public-from-prod}
spec:
  endpointSelector: {matchLabels: {app: service}}
  ingress:
  - fromEndpoints: [{matchLabels: {env: prod}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /public}]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: health-from-all}
spec:
  endpointSelector: {matchLabels: {app: service}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /healthz}]}}]
"""


def test_l7_union_gets_one_stable_port() -> None:
    r = resolve(policies(L7_UNION))
    unions = l7_unions(r)
    assert len(unions) == 2  # {health} for every peer, {health, public} for prod
    health = next(k for k, v in unions.items() if len(v) == 1)
    both = next(k for k, v in unions.items() if len(v) == 2)
    assert both.startswith("o-") and health.startswith("o-")
    ports = ProxyPorts()
    d = desired(r, ports)
    svc = ep_id(r, "service-pod")
    prod = r.endpoint("default/client-prod").endpoint.identity
    assert set(d.policy[svc]) == {
        PolicyDecision(Direction.INGRESS, 0, TCP, 80, 80, Action.REDIRECT, ports.ports[health]),
        PolicyDecision(Direction.INGRESS, prod, TCP, 80, 80, Action.REDIRECT, ports.ports[both]),
    }
    assert ports.ports[health] != ports.ports[both]
    # stable: a fresh assignment in another process gives the same ports; the order does not matter
    again = ProxyPorts()
    again.assign(reversed(list(unions)))
    assert again.ports == ports.ports
    r2 = resolve(tuple(reversed(policies(L7_UNION))))
    assert desired(r2, ProxyPorts()).policy[svc] == d.policy[svc]


def test_proxy_ports_persist_and_probe(tmp_path: Path) -> None:
    ports = ProxyPorts({"taken": 0})
    ports.assign(["a", "b", "c"])
    assert len(set(ports.ports.values())) == 4
    path = tmp_path / "ports.json"
    ports.save(path)
    loaded = ProxyPorts.load(path)
    assert loaded.ports == ports.ports
    assert not loaded.assign(["a", "b"])
    with pytest.raises(PlanError):
        plan(resolve(policies(L7_UNION)), {"default/service-pod": 5}, {})


DENY_ICMP = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: svc}
spec:
  endpointSelector: {matchLabels: {app: service}}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}, {port: "53", protocol: UDP}]}]
  - icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {env: dev}}]
"""


def test_deny_ranges_icmp_and_wildcard_peer() -> None:
    r = resolve(policies(DENY_ICMP))
    d = desired(r)
    svc = ep_id(r, "service-pod")
    decisions = set(d.policy[svc])
    topo = build_topology(seed_002(), IdentityAllocator())
    dev_ids = {e.identity for e in topo.endpoints if "k8s:env=dev" in e.labels.strings()}
    assert len(dev_ids) == 1  # client-dev and dev-pod share their labels
    denies = {x for x in decisions if x.action == Action.DENY}
    assert {x.peer_identity for x in denies} == dev_ids
    assert all(x.proto is None for x in denies)
    assert PolicyDecision(Direction.INGRESS, 0, ICMP, 8, 8, Action.ALLOW) in decisions
    assert PolicyDecision(Direction.INGRESS, 0, ICMPV6, 128, 128, Action.ALLOW) in decisions
    prod = topo.find("client-prod")
    assert prod is not None
    assert PolicyDecision(Direction.INGRESS, prod.identity, TCP, 8000, 8100, Action.ALLOW) in decisions
    assert PolicyDecision(Direction.INGRESS, prod.identity, UDP, 53, 53, Action.ALLOW) in decisions
    entries = policy_entries(d.policy[svc])
    dev = topo.find("client-dev")
    assert dev is not None
    assert lookup(entries, Direction.INGRESS, dev.identity, ICMP, 8)[0] == Action.DENY
    assert lookup(entries, Direction.INGRESS, dev.identity, TCP, 8050)[0] == Action.DENY
    assert lookup(entries, Direction.INGRESS, prod.identity, TCP, 8050)[0] == Action.ALLOW
    assert lookup(entries, Direction.INGRESS, prod.identity, TCP, 8101)[0] == Action.DENY
    assert lookup(entries, Direction.INGRESS, 2, ICMP, 8)[0] == Action.ALLOW


def test_missing_interface_is_reported_not_programmed() -> None:
    r = resolve(seeds("002-allow-public-from-prod"))
    d = plan(r, {"default/client-prod": 7}, {k: 10000 for k in l7_unions(r)})
    assert set(d.endpoints) == {7}
    assert "default/service-pod" in d.missing


def test_sync_writes_only_the_difference() -> None:
    dp = FakeDatapath()
    r = resolve(seeds("002-allow-public-from-prod"))
    ports = ProxyPorts()
    first = sync(dp, desired(r, ports), uplink=99)
    assert first.attached == len(r.endpoints) + 1 and first.policy_written == 1
    assert dp.devs[99].name == "UPLINK"
    again = sync(dp, desired(r, ports), uplink=99)
    assert again.changes == 0
    r2 = resolve(seeds("002-allow-public-from-prod", "002-default-deny-dev", "002-dev-to-host"))
    third = sync(dp, desired(r2, ports), uplink=99)
    assert (third.endpoints_written, third.policy_written, third.ipcache_written) == (1, 1, 0)
    assert third.policy_deleted == 0 and third.endpoints_deleted == 0
    dev = ep_id(r2, "dev-pod")
    assert dp.eps[dev].flags == 2
    # back to no policy: entries deleted, flags cleared, nothing else touched
    fourth = sync(dp, desired(resolve(()), ports), uplink=99)
    assert fourth.policy_deleted == 2 and fourth.endpoints_written == 2 and fourth.ipcache_written == 0
    assert not dp.pol
    # an endpoint that went away: endpoint, device and its ipcache entries removed
    d = desired(resolve(()), ports)
    gone = ep_id(r, "webpod-1") if "default/webpod-1" in interfaces(r) else ep_id(r, "dev-pod")
    trimmed = DesiredState(
        {k: v for k, v in d.endpoints.items() if k != gone},
        {k: v for k, v in d.ipcache.items() if v.endpoint_id != gone},
        {k: v for k, v in d.policy.items() if k != gone},
    )
    fifth = sync(dp, trimmed, uplink=99)
    assert (fifth.endpoints_deleted, fifth.detached, fifth.ipcache_deleted) == (1, 1, 1)
    assert gone not in dp.eps and gone not in dp.devs


def test_audit_mode_per_endpoint_and_from_file() -> None:
    r = resolve(seeds("002-default-deny-dev", "002-dev-to-host"))
    ports = ProxyPorts()
    dev = ep_id(r, "dev-pod")
    d = plan(r, interfaces(r), ports.ports, frozenset({"default/dev-pod"}))
    assert d.endpoints[dev].audit and not any(e.audit for k, e in d.endpoints.items() if k != dev)
    dp = FakeDatapath()
    sync(dp, d, uplink=None)
    assert dp.eps[dev].flags & 0x4 and dp.eps[dev].flags & 0x2  # audited and still enforced (events)
    # leaving audit mode rewrites the endpoint (flags compared including AUDIT)
    again = sync(dp, plan(r, interfaces(r), ports.ports), uplink=None)
    assert again.endpoints_written == 1 and not dp.eps[dev].flags & 0x4
    # the endpoints file: globally or per endpoint
    raw = seed_002().model_dump(by_alias=True)
    assert EndpointsFile.model_validate(raw).audited() == frozenset()
    raw["endpoints"][0]["policyAuditMode"] = True
    first = f"{raw['endpoints'][0]['namespace']}/{raw['endpoints'][0]['name']}"
    assert EndpointsFile.model_validate(raw).audited() == {first}
    everyone = EndpointsFile.model_validate({**raw, "policyAuditMode": True}).audited()
    assert len(everyone) == len(raw["endpoints"])


def test_audited_endpoint_gets_the_audit_variant_of_its_l7_union() -> None:
    r = resolve(seeds("002-allow-public-from-prod"))
    audited = frozenset({"default/service-pod"})
    unions = l7_unions(r, audited)
    (key,) = unions
    assert key.startswith("audit-o-") and l7_unions(r) == {key.removeprefix("audit-"): unions[key]}
    ports = ProxyPorts()
    ports.assign([*unions, *l7_unions(r)])
    d = plan(r, interfaces(r), ports.ports, audited)
    redirects = [p for p in d.policy[ep_id(r, "service-pod")] if p.action is Action.REDIRECT]
    assert [p.proxy_port for p in redirects] == [ports.ports[key]]
    assert ports.ports[key] != ports.ports[key.removeprefix("audit-")]


def test_editing_l7_rules_in_place_keeps_the_port() -> None:
    before = l7_unions(resolve(policies(L7_UNION)))
    edited = L7_UNION.replace("path: /healthz", "path: /healthz2")
    assert edited != L7_UNION
    after = l7_unions(resolve(policies(edited)))
    assert set(after) == set(before)  # same keys: same proxy ports, same listeners
    assert after != before  # different rules behind them


def test_policy_revision_bumped_only_when_what_is_allowed_changes() -> None:
    dp = FakeDatapath()
    r = resolve(seeds("002-allow-public-from-prod"))
    d = desired(r)
    sync(dp, d, uplink=None)
    assert dp.revision == 1  # first programming
    sync(dp, d, uplink=None)
    assert dp.revision == 1  # nothing changed
    # an ipcache-only change (an FQDN address learned, then expired): established flows keep going
    extra = ipaddress.ip_network("10.99.0.1/32")
    learned = DesiredState(d.endpoints, {**d.ipcache, extra: d.ipcache[next(iter(d.ipcache))]}, d.policy)
    sync(dp, learned, uplink=None)
    sync(dp, d, uplink=None)
    assert dp.revision == 1
    # a policy change: every established flow is decided again
    sync(dp, desired(resolve(seeds("002-allow-public-from-prod", "002-dev-to-host"))), uplink=None)
    assert dp.revision == 2
