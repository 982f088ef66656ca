"""``toServices``, ``fromNodes``/``toNodes`` and node-selector-label identities (seed 002 and inline)."""

from __future__ import annotations

import ipaddress

import pytest
from resolve_helpers import endpoints, policies, seed_002, seeds

from l7.endpoints import EndpointsError, EndpointsFile, build_topology, load_endpoints_text
from l7.identity import REMOTE_NODE_MIN, IdentityAllocator, ReservedIdentity, node_labels
from l7.resolve import Direction, ResolvedNode, Resolver, Verdict, decide, lookup_identity, resolve
from l7.trace import TraceError, trace

SERVICE_RULE = "CiliumNetworkPolicy/default/service-rule"
FROM_CP = "CiliumNetworkPolicy/default/to-prod-from-control-plane-nodes"
CTR, W1, W2 = "192.168.10.100", "192.168.10.101", "192.168.10.102"


def _cnp(spec: str, name: str = "p", namespace: str = "default") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n"
    )


def _resolve(spec: str, node: str | None = "k8s-w1", file: EndpointsFile | None = None) -> ResolvedNode:
    allocator = IdentityAllocator()
    topology = build_topology(file or seed_002(), allocator)
    return resolve(policies(_cnp(spec)), topology, allocator, node=node)


def _verdict(resolved: ResolvedNode, endpoint: str, direction: Direction, ip: str, port: int = 80) -> Verdict:
    return decide(resolved, endpoint, direction, lookup_identity(resolved, ip), "TCP", port).verdict


# -- toServices: seed 002's service-rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("dst", "verdict", "shown"),
    [
        # k8sService {myservice, default}: a Service without a selector → its backend IPs (/32, /128)
        ("myservice", "allowed", "10.100.0.10 (service default/myservice)"),
        ("default/myservice", "allowed", "10.100.0.10 (service default/myservice)"),
        ("10.100.0.10", "allowed", "10.100.0.10"),
        ("fd00:100::10", "allowed", "fd00:100::10"),
        # k8sServiceSelector {env: staging} in another-namespace → the pods staging-api selects
        (
            "another-namespace/staging-api",
            "allowed",
            "another-namespace/api-staging (service another-namespace/staging-api)",
        ),
        ("another-namespace/api-staging", "allowed", "another-namespace/api-staging"),
        # nothing else: a Service labelled env=production, myservice of another namespace, a pod labelled
        # env=staging behind no Service, an env=staging Service in default, other pods, world, nodes
        ("another-namespace/api-stable", "denied", "another-namespace/api-stable"),
        (
            "another-namespace/myservice",
            "denied",
            "another-namespace/api-stable (service another-namespace/myservice)",
        ),
        ("another-namespace/staging-decoy", "denied", "another-namespace/staging-decoy"),
        ("other-external", "denied", "10.100.0.20 (service default/other-external)"),
        ("10.100.0.11", "denied", "10.100.0.11"),
        ("service-pod", "denied", "default/service-pod"),
        ("webpod", "denied", "default/webpod-1 (service default/webpod)"),
        ("8.8.8.8", "denied", "8.8.8.8"),
        ("k8s-ctr", "denied", "node k8s-ctr (reserved:remote-node)"),
    ],
)
def test_service_rule(dst: str, verdict: str, shown: str) -> None:
    result = trace(seeds("002-service-rule"), seed_002(), "app2", dst, 443, "TCP")
    assert (result.verdict, result.destination) == (verdict, shown), result.to_text()
    if verdict == "allowed":
        assert (result.policy, result.rule) == (SERVICE_RULE, "spec.egress[0]")
    else:
        assert result.steps[0].reason == "default-deny"


def test_service_rule_ports_and_ipcache() -> None:
    allocator = IdentityAllocator()
    topology = build_topology(seed_002(), allocator)
    resolved = resolve(seeds("002-service-rule"), topology, allocator, node="k8s-w1")
    cache = {e.prefix: e.identity for e in resolved.ipcache}
    # backends of the selected selector-less Service get CIDR identities, as toCIDR prefixes do ...
    for prefix in ("10.100.0.10/32", "fd00:100::10/128"):
        labels = allocator.lookup(cache[prefix])
        assert (
            labels is not None
            and f"cidr:{prefix}" in labels.strings()
            and "reserved:world" in labels.strings()
        )
    # ... only those of Services some toServices selects
    assert "10.100.0.20/32" not in cache
    # no toPorts: every protocol and port
    for proto, port in (("UDP", 53), ("ICMP", 8), ("TCP", 1)):
        peer = cache["10.100.0.10/32"]
        assert decide(resolved, "default/app2", Direction.EGRESS, peer, proto, port).verdict is Verdict.ALLOW


SVC_FILE = {
    "namespaces": {"default": {}, "other": {}},
    "nodes": [{"name": "n1", "ips": ["192.168.0.1"]}],
    "endpoints": [
        {"name": "a", "labels": {"app": "a"}, "ips": ["10.0.0.1"], "node": "n1"},
        {"name": "web", "labels": {"app": "web"}, "ips": ["10.0.0.2"], "ports": {"http": 8080}},
        {
            "name": "web",
            "namespace": "other",
            "labels": {"app": "web"},
            "ips": ["10.0.1.2"],
            "ports": {"http": 9090},
        },
        {"name": "db", "namespace": "other", "labels": {"app": "db"}, "ips": ["10.0.1.3"]},
    ],
    "services": [
        {"name": "web", "labels": {"tier": "front"}, "selector": {"app": "web"}},
        {"name": "web", "namespace": "other", "labels": {"tier": "front"}, "selector": {"app": "web"}},
        {"name": "db", "namespace": "other", "labels": {"tier": "back"}, "selector": {"app": "db"}},
        {"name": "ext", "labels": {"tier": "back"}, "backends": ["203.0.113.7", "2001:db8::7"]},
        {"name": "empty", "selector": {}, "backends": ["203.0.113.8"]},  # selector {}: no selector
    ],
}
A = "endpointSelector: {matchLabels: {app: a}}\n"
WEB_ANY = "egress: [{toServices: [{k8sService: {serviceName: web}}]}]"
WEB_OTHER = "egress: [{toServices: [{k8sService: {serviceName: web, namespace: other}}]}]"
BACK = "egress: [{toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: back}}}}]}]"
BACK_DEFAULT = (
    "egress: [{toServices: [{k8sServiceSelector:"
    " {selector: {matchLabels: {tier: back}}, namespace: default}}]}]"
)
BY_APP = "egress: [{toServices: [{k8sServiceSelector: {selector: {matchLabels: {app: web}}}}]}]"
WEB_PORT = "egress: [{toServices: [{k8sService: {serviceName: web}}], toPorts: [{ports: [{port: '%s'}]}]}]"
DENY_EXT = "egress: [{toEntities: [all]}]\negressDeny: [{toServices: [{k8sService: {serviceName: ext}}]}]"


@pytest.mark.parametrize(
    ("rule", "ip", "port", "verdict"),
    [
        # k8sService without a namespace: the name in every namespace (even in a namespaced policy)
        (WEB_ANY, "10.0.0.2", 80, Verdict.ALLOW),
        (WEB_ANY, "10.0.1.2", 80, Verdict.ALLOW),
        (WEB_ANY, "10.0.1.3", 80, Verdict.DENY),
        (WEB_OTHER, "10.0.0.2", 80, Verdict.DENY),
        (WEB_OTHER, "10.0.1.2", 80, Verdict.ALLOW),
        ("egress: [{toServices: [{k8sService: {serviceName: nope}}]}]", "10.0.0.2", 80, Verdict.DENY),
        # k8sServiceSelector matches the Service's own labels; no namespace: every namespace
        (BACK, "10.0.1.3", 80, Verdict.ALLOW),
        (BACK, "203.0.113.7", 80, Verdict.ALLOW),
        (BACK, "2001:db8::7", 80, Verdict.ALLOW),
        (BACK, "10.0.0.2", 80, Verdict.DENY),
        (BY_APP, "10.0.0.2", 80, Verdict.DENY),  # pod labels are not Service labels
        (BACK_DEFAULT, "10.0.1.3", 80, Verdict.DENY),
        (BACK_DEFAULT, "203.0.113.7", 80, Verdict.ALLOW),
        # selector {} is a Service without a selector: its backends
        ("egress: [{toServices: [{k8sService: {serviceName: empty}}]}]", "203.0.113.8", 80, Verdict.ALLOW),
        # ports come from toPorts; named ports resolve against the selected pods
        (WEB_PORT % "80", "10.0.0.2", 80, Verdict.ALLOW),
        (WEB_PORT % "80", "10.0.0.2", 443, Verdict.DENY),
        (WEB_PORT % "http", "10.0.1.2", 9090, Verdict.ALLOW),
        (WEB_PORT % "http", "10.0.1.2", 8080, Verdict.DENY),
        (WEB_PORT % "http", "10.0.0.2", 8080, Verdict.ALLOW),
        # egressDeny with toServices
        (DENY_EXT, "203.0.113.7", 80, Verdict.DENY),
        (DENY_EXT, "203.0.113.9", 80, Verdict.ALLOW),
    ],
)
def test_to_services(rule: str, ip: str, port: int, verdict: Verdict) -> None:
    resolved = _resolve(A + rule, node="n1", file=endpoints(SVC_FILE))
    assert _verdict(resolved, "default/a", Direction.EGRESS, ip, port) is verdict


def test_services_change_is_picked_up_incrementally() -> None:
    allocator = IdentityAllocator()
    rules = policies(
        _cnp(A + "egress: [{toServices: [{k8sService: {serviceName: web, namespace: default}}]}]")
    )
    resolver = Resolver(allocator, "n1")
    first = resolver.resolve(rules, build_topology(endpoints(SVC_FILE), allocator))
    assert _verdict(first, "default/a", Direction.EGRESS, "10.0.0.2") is Verdict.ALLOW
    moved = dict(SVC_FILE)
    moved["services"] = [{"name": "web", "selector": {"app": "db"}}]
    second = resolver.resolve(rules, build_topology(endpoints(moved), allocator))
    assert _verdict(second, "default/a", Direction.EGRESS, "10.0.0.2") is Verdict.DENY


def test_services_file_validation() -> None:
    both = "services: [{name: s, selector: {app: x}, backends: [10.0.0.1]}]"
    with pytest.raises(EndpointsError, match="backends are only for a Service without a selector"):
        load_endpoints_text(both)
    with pytest.raises(EndpointsError, match="duplicate service default/s"):
        load_endpoints_text("services: [{name: s}, {name: s, namespace: default}]")
    with pytest.raises(EndpointsError) as info:
        load_endpoints_text("services: [{name: s, backends: [nope]}]")
    assert {p for p, _ in info.value.problems} == {"services[0].backends"}


def test_trace_to_service_without_backends() -> None:
    file = endpoints({**SVC_FILE, "services": [{"name": "none", "backends": []}]})
    with pytest.raises(TraceError, match="service default/none has no backends"):
        trace((), file, "a", "none", 80, "TCP")


# -- fromNodes / toNodes: seed 002's to-prod-from-control-plane-nodes -----------------------------------


@pytest.mark.parametrize(
    ("node", "ip", "verdict"),
    [
        # seen from k8s-w1 (client-prod's node): k8s-ctr carries the control-plane label
        ("k8s-w1", CTR, Verdict.ALLOW),
        ("k8s-w1", W2, Verdict.DENY),
        ("k8s-w1", W1, Verdict.DENY),  # the local node is reserved:host: fromNodes never selects it
        ("k8s-w1", "172.20.1.40", Verdict.DENY),  # a pod
        ("k8s-w1", "8.8.8.8", Verdict.DENY),
        (None, CTR, Verdict.ALLOW),  # no perspective: every node is remote
        (None, W1, Verdict.DENY),
        (None, W2, Verdict.DENY),
    ],
)
def test_from_control_plane_nodes(node: str | None, ip: str, verdict: Verdict) -> None:
    allocator = IdentityAllocator()
    topology = build_topology(seed_002(), allocator)
    resolved = resolve(seeds("002-to-prod-from-control-plane-nodes"), topology, allocator, node=node)
    got = decide(resolved, "default/client-prod", Direction.INGRESS, lookup_identity(resolved, ip), "TCP", 80)
    assert got.verdict is verdict
    if verdict is Verdict.ALLOW:
        assert got.origins[0].policy == FROM_CP and got.origins[0].path == "spec.ingress[0]"
    # env=dev pods are not selected by the policy
    assert _verdict(resolved, "default/dev-pod", Direction.INGRESS, ip) is Verdict.ALLOW


PROD = "endpointSelector: {matchLabels: {env: prod}}\n"
CP = "node-role.kubernetes.io/control-plane"
NOT_CP = f"ingress: [{{fromNodes: [{{matchExpressions: [{{key: {CP}, operator: DoesNotExist}}]}}]}}]"
CP_443 = f"ingress: [{{fromNodes: [{{matchLabels: {{{CP}: ''}}}}], toPorts: [{{ports: [{{port: '443'}}]}}]}}]"
TO_CP = f"egress: [{{toNodes: [{{matchLabels: {{{CP}: ''}}}}]}}]"


@pytest.mark.parametrize(
    ("rule", "ip", "verdict"),
    [
        # {}: every remote node (never the local host, nor pods, nor world)
        ("ingress: [{fromNodes: [{}]}]", CTR, Verdict.ALLOW),
        ("ingress: [{fromNodes: [{}]}]", W2, Verdict.ALLOW),
        ("ingress: [{fromNodes: [{}]}]", W1, Verdict.DENY),
        ("ingress: [{fromNodes: [{}]}]", "172.20.1.40", Verdict.DENY),
        ("ingress: [{fromNodes: [{}]}]", "8.8.8.8", Verdict.DENY),
        (NOT_CP, W2, Verdict.ALLOW),
        (NOT_CP, CTR, Verdict.DENY),
        ("ingress: [{fromNodes: [{matchLabels: {k8s:kubernetes.io/hostname: k8s-w2}}]}]", W2, Verdict.ALLOW),
        ("ingress: [{fromNodes: [{matchLabels: {kubernetes.io/hostname: k8s-w2}}]}]", CTR, Verdict.DENY),
        ("ingress: [{fromNodes: []}]", CTR, Verdict.DENY),
        # fromNodes + toPorts
        (CP_443, CTR, Verdict.DENY),
        # entity remote-node still selects every remote node; host only the local one
        ("ingress: [{fromEntities: [remote-node]}]", CTR, Verdict.ALLOW),
        ("ingress: [{fromEntities: [remote-node]}]", W2, Verdict.ALLOW),
        ("ingress: [{fromEntities: [remote-node]}]", W1, Verdict.DENY),
        ("ingress: [{fromEntities: [cluster]}]", W2, Verdict.ALLOW),
        ("ingress: [{fromEntities: [world]}]", W2, Verdict.DENY),
        ("ingress: [{fromEntities: [host]}]", W1, Verdict.ALLOW),
        ("ingress: [{fromEntities: [host]}]", CTR, Verdict.DENY),
        ("ingress: [{fromEndpoints: [{matchLabels: {reserved:remote-node: ''}}]}]", W2, Verdict.ALLOW),
    ],
)
def test_from_nodes(rule: str, ip: str, verdict: Verdict) -> None:
    resolved = _resolve(PROD + rule)
    assert _verdict(resolved, "default/client-prod", Direction.INGRESS, ip) is verdict


@pytest.mark.parametrize(
    ("rule", "ip", "verdict"),
    [
        (TO_CP, CTR, Verdict.ALLOW),
        (TO_CP, W2, Verdict.DENY),
        ("egress: [{toNodes: [{}]}]", W2, Verdict.ALLOW),
        ("egress: [{toNodes: [{}]}]", W1, Verdict.DENY),
        ("egress: [{toNodes: [{}]}]", "172.20.2.48", Verdict.DENY),
        ("egress: [{toEntities: [remote-node]}]", CTR, Verdict.ALLOW),
        ("egress: [{toEntities: [remote-node]}]", W2, Verdict.ALLOW),
    ],
)
def test_to_nodes(rule: str, ip: str, verdict: Verdict) -> None:
    resolved = _resolve(PROD + rule)
    assert _verdict(resolved, "default/client-prod", Direction.EGRESS, ip) is verdict


def test_trace_to_node_uses_its_identity() -> None:
    rule = policies(_cnp(PROD + TO_CP))
    assert trace(rule, seed_002(), "client-prod", "k8s-ctr", 22, "TCP").allowed
    assert not trace(rule, seed_002(), "client-prod", "k8s-w2", 22, "TCP").allowed
    local = trace(rule, seed_002(), "client-prod", "k8s-w1", 22, "TCP")  # client-prod runs on k8s-w1
    assert (local.verdict, local.steps[0].peer_identity) == ("denied", ReservedIdentity.HOST)


# -- node identities -------------------------------------------------------------------------------------


def test_node_identities() -> None:
    allocator = IdentityAllocator()
    topology = build_topology(seed_002(), allocator)
    ids = {n.name: n.identity for n in topology.nodes}
    assert len(set(ids.values())) == 3 and all(i >= REMOTE_NODE_MIN for i in ids.values())
    ctr = allocator.lookup(ids["k8s-ctr"])
    assert ctr is not None and set(ctr.strings()) == {
        "reserved:remote-node",
        f"k8s:{CP}",
        "k8s:kubernetes.io/hostname=k8s-ctr",
    }
    assert allocator.get(ids["k8s-ctr"]).remote_node and not allocator.get(ids["k8s-ctr"]).local
    # stable: the same numbers from a fresh allocator, in another order, and after a state-file round trip
    other = IdentityAllocator()
    other.allocate(node_labels({"kubernetes.io/hostname": "k8s-w2"}))
    again = build_topology(seed_002(), other)
    assert {n.name: n.identity for n in again.nodes} == ids
    restored = IdentityAllocator.loads(allocator.dumps())
    assert {n.name: n.identity for n in build_topology(seed_002(), restored).nodes} == ids
    # without labels: the reserved remote-node identity; equal labels share one identity
    plain = build_topology(
        endpoints(
            {
                "nodes": [
                    {"name": "x", "ips": ["10.9.0.1"]},
                    {"name": "y", "labels": {"a": "b"}},
                    {"name": "z", "labels": {"a": "b"}},
                ]
            }
        ),
        IdentityAllocator(),
    )
    assert plain.nodes[0].identity == ReservedIdentity.REMOTE_NODE
    assert plain.nodes[1].identity == plain.nodes[2].identity >= REMOTE_NODE_MIN


@pytest.mark.parametrize("node", ["k8s-w1", "k8s-ctr", None])
def test_node_ipcache(node: str | None) -> None:
    allocator = IdentityAllocator()
    topology = build_topology(seed_002(), allocator)
    resolved = resolve((), topology, allocator, node=node)
    cache = {e.prefix: e.identity for e in resolved.ipcache}
    for n in topology.nodes:
        for ip in n.ips:
            expected = ReservedIdentity.HOST if n.name == node else n.identity
            assert cache[str(ipaddress.ip_network(ip))] == expected
    assert {i.id for i in resolved.identities} >= {n.identity for n in topology.nodes}


def test_from_nodes_ports_come_from_to_ports() -> None:
    resolved = _resolve(PROD + CP_443)
    assert _verdict(resolved, "default/client-prod", Direction.INGRESS, CTR, 443) is Verdict.ALLOW
    assert _verdict(resolved, "default/client-prod", Direction.INGRESS, W2, 443) is Verdict.DENY
