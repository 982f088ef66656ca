"""``decide`` on inline policies: entities, CIDR, ports, protocols, deny, scoping, default deny."""

from __future__ import annotations

import ipaddress

import pytest
from resolve_helpers import endpoints, policies

from l7.endpoints import build_topology
from l7.identity import IdentityAllocator, ReservedIdentity
from l7.resolve import Direction, Reason, ResolvedNode, Verdict, decide, lookup_identity, resolve

TOPOLOGY = {
    "nodes": [{"name": "n1", "ips": ["192.168.0.1"]}, {"name": "n2", "ips": ["192.168.0.2"]}],
    "endpoints": [
        {"name": "a", "labels": {"app": "a"}, "ips": ["10.0.0.1", "fd00::1"], "node": "n1"},
        {"name": "b", "labels": {"app": "b"}, "ips": ["10.0.0.2"], "node": "n1", "ports": {"http": 8080}},
        {
            "name": "b",
            "namespace": "other",
            "labels": {"app": "b"},
            "ips": ["10.0.1.2"],
            "node": "n2",
            "ports": {"http": 9090},
        },
    ],
}


def _cnp(spec: str, name: str = "p", namespace: str = "default", kind: str = "CiliumNetworkPolicy") -> str:
    ns = f"\n  namespace: {namespace}" if kind == "CiliumNetworkPolicy" else ""
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata:\n  name: {name}{ns}\nspec:\n{body}\n"


def _resolve(spec: str, **kw: str) -> tuple[ResolvedNode, IdentityAllocator]:
    allocator = IdentityAllocator()
    topology = build_topology(endpoints(TOPOLOGY), allocator)
    return resolve(policies(_cnp(spec, **kw)), topology, allocator, node="n1"), allocator


def _peer(resolved: ResolvedNode, allocator: IdentityAllocator, ip: str) -> int:
    return lookup_identity(resolved, ip)


def _egress(spec: str, ip: str, proto: str, port: int, **kw: str) -> Verdict:
    resolved, allocator = _resolve(spec, **kw)
    return decide(
        resolved, "default/a", Direction.EGRESS, _peer(resolved, allocator, ip), proto, port
    ).verdict


A_EGRESS = "endpointSelector: {matchLabels: {app: a}}\n"
DENY_22 = "egress: [{toEntities: [all]}]\negressDeny: [{toPorts: [{ports: [{port: '22', protocol: TCP}]}]}]"
NS_EXISTS = "[{matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]}]"
ALLOW, DENY = Verdict.ALLOW, Verdict.DENY


@pytest.mark.parametrize(
    ("rules", "ip", "proto", "port", "verdict"),
    [
        # entities
        ("egress: [{toEntities: [world]}]", "8.8.8.8", "TCP", 443, ALLOW),
        ("egress: [{toEntities: [world]}]", "2001:db8::1", "TCP", 443, ALLOW),
        ("egress: [{toEntities: [world]}]", "10.0.0.2", "TCP", 80, DENY),
        ("egress: [{toEntities: [world-ipv4]}]", "2001:db8::1", "TCP", 443, DENY),
        ("egress: [{toEntities: [cluster]}]", "10.0.0.2", "TCP", 80, ALLOW),
        ("egress: [{toEntities: [cluster]}]", "192.168.0.2", "TCP", 80, ALLOW),
        ("egress: [{toEntities: [cluster]}]", "8.8.8.8", "TCP", 80, DENY),
        ("egress: [{toEntities: [host]}]", "192.168.0.1", "TCP", 80, ALLOW),
        ("egress: [{toEntities: [host]}]", "192.168.0.2", "TCP", 80, DENY),
        ("egress: [{toEntities: [remote-node]}]", "192.168.0.2", "UDP", 53, ALLOW),
        ("egress: [{toEntities: [all]}]", "1.2.3.4", "SCTP", 9, ALLOW),
        ("egress: [{toEntities: []}]", "1.2.3.4", "TCP", 80, DENY),
        ("egress: [{toEndpoints: []}]", "10.0.0.2", "TCP", 80, DENY),
        ("egress: [{}]", "10.0.0.2", "TCP", 80, DENY),
        # CIDR with except; CIDR rules never select pods
        ("egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]}]", "10.1.2.3", "TCP", 80, ALLOW),
        ("egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]}]", "10.96.0.5", "TCP", 80, DENY),
        ("egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]}]", "10.0.0.2", "TCP", 80, DENY),
        ("egress: [{toCIDR: [20.1.1.1/32]}]", "20.1.1.1", "TCP", 80, ALLOW),
        ("egress: [{toCIDR: [20.1.1.1/32]}]", "20.1.1.2", "TCP", 80, DENY),
        ("egress: [{toCIDR: [0.0.0.0/0]}]", "20.1.1.2", "TCP", 80, ALLOW),
        ("egress: [{toCIDR: [0.0.0.0/0]}]", "2001:db8::1", "TCP", 80, DENY),
        ("egress: [{toCIDR: [0.0.0.0/0]}]", "192.168.0.2", "TCP", 80, DENY),
        # port ranges and protocols
        (
            "egress: [{toPorts: [{ports: [{port: '8000', endPort: 8080, protocol: TCP}]}]}]",
            "1.1.1.1",
            "TCP",
            8050,
            ALLOW,
        ),
        (
            "egress: [{toPorts: [{ports: [{port: '8000', endPort: 8080, protocol: TCP}]}]}]",
            "1.1.1.1",
            "TCP",
            8081,
            DENY,
        ),
        (
            "egress: [{toPorts: [{ports: [{port: '8000', endPort: 8080, protocol: TCP}]}]}]",
            "1.1.1.1",
            "UDP",
            8050,
            DENY,
        ),
        ("egress: [{toPorts: [{ports: [{port: '53', protocol: ANY}]}]}]", "10.0.0.2", "UDP", 53, ALLOW),
        ("egress: [{toPorts: [{ports: [{port: '53', protocol: ANY}]}]}]", "10.0.0.2", "SCTP", 53, ALLOW),
        ("egress: [{toPorts: [{ports: [{port: '53'}]}]}]", "10.0.0.2", "TCP", 53, ALLOW),
        ("egress: [{toPorts: [{ports: [{port: '53', protocol: ANY}]}]}]", "10.0.0.2", "ICMP", 8, DENY),
        ("egress: [{toPorts: [{ports: [{port: '0', protocol: UDP}]}]}]", "10.0.0.2", "UDP", 9999, ALLOW),
        ("egress: [{toEndpoints: [{}]}]", "10.0.0.2", "ICMP", 8, ALLOW),  # L3-only: every protocol
        ("egress: [{icmps: [{fields: [{type: 8}]}]}]", "10.0.0.2", "ICMP", 8, ALLOW),
        ("egress: [{icmps: [{fields: [{type: 8}]}]}]", "10.0.0.2", "ICMP", 0, DENY),
        (
            "egress: [{icmps: [{fields: [{type: EchoRequest, family: IPv6}]}]}]",
            "fd00::9",
            "ICMPV6",
            128,
            ALLOW,
        ),
        # deny wins
        (
            DENY_22,
            "10.0.0.2",
            "TCP",
            22,
            DENY,
        ),
        (
            DENY_22,
            "10.0.0.2",
            "TCP",
            80,
            ALLOW,
        ),
        # enableDefaultDeny: false only adds (here: only denies)
        (
            "egressDeny: [{toCIDR: [169.254.169.254/32]}]\nenableDefaultDeny: {egress: false}",
            "1.1.1.1",
            "TCP",
            80,
            ALLOW,
        ),
        (
            "egressDeny: [{toCIDR: [169.254.169.254/32]}]\nenableDefaultDeny: {egress: false}",
            "169.254.169.254",
            "TCP",
            80,
            DENY,
        ),
        (
            "egressDeny: [{toCIDR: [169.254.169.254/32]}]",
            "1.1.1.1",
            "TCP",
            80,
            DENY,
        ),  # deny-only enables default deny
        # namespace scoping of peers
        ("egress: [{toEndpoints: [{matchLabels: {app: b}}]}]", "10.0.0.2", "TCP", 80, ALLOW),
        ("egress: [{toEndpoints: [{matchLabels: {app: b}}]}]", "10.0.1.2", "TCP", 80, DENY),
        (
            "egress: [{toEndpoints: [{matchLabels: {app: b, k8s:io.kubernetes.pod.namespace: other}}]}]",
            "10.0.1.2",
            "TCP",
            80,
            ALLOW,
        ),
        (
            f"egress: [{{toEndpoints: {NS_EXISTS}}}]",
            "10.0.1.2",
            "TCP",
            80,
            ALLOW,
        ),
        ("egress: [{toEndpoints: [{}]}]", "10.0.1.2", "TCP", 80, DENY),
        ("egress: [{toEndpoints: [{}]}]", "8.8.8.8", "TCP", 80, DENY),
        ("egress: [{toEndpoints: [{matchLabels: {reserved:host: ''}}]}]", "192.168.0.1", "TCP", 80, ALLOW),
        (
            "egress: [{toEndpoints: [{matchExpressions: [{key: app, operator: NotIn, values: [b]}]}]}]",
            "10.0.0.2",
            "TCP",
            80,
            DENY,
        ),
        # named ports (egress: the peer's ports)
        ("egress: [{toPorts: [{ports: [{port: http, protocol: TCP}]}]}]", "10.0.0.2", "TCP", 8080, ALLOW),
        ("egress: [{toPorts: [{ports: [{port: http, protocol: TCP}]}]}]", "10.0.1.2", "TCP", 9090, ALLOW),
        ("egress: [{toPorts: [{ports: [{port: http, protocol: TCP}]}]}]", "10.0.0.2", "TCP", 9090, DENY),
        ("egress: [{toPorts: [{ports: [{port: nope, protocol: TCP}]}]}]", "10.0.0.2", "TCP", 8080, DENY),
    ],
)
def test_egress(rules: str, ip: str, proto: str, port: int, verdict: Verdict) -> None:
    assert _egress(A_EGRESS + rules, ip, proto, port) == verdict


def test_clusterwide_empty_selector_selects_every_pod_only() -> None:
    # Cilium adds `k8s:io.kubernetes.pod.namespace Exists` (cilium/cilium#12890): pods, not world/hosts
    spec = "endpointSelector: {matchLabels: {app: a}}\negress: [{toEndpoints: [{}]}]"
    assert _egress(spec, "10.0.1.2", "TCP", 80, kind="CiliumClusterwideNetworkPolicy") is ALLOW
    for ip in ("8.8.8.8", "192.168.0.2"):
        assert _egress(spec, ip, "TCP", 80, kind="CiliumClusterwideNetworkPolicy") is DENY


def test_subject_scoped_to_policy_namespace() -> None:
    resolved, _ = _resolve("endpointSelector: {}\ningress: [{}]", namespace="other")
    assert resolved.endpoint("default/a").ingress.enforced is False
    assert resolved.endpoint("default/b").ingress.enforced is False
    resolved, _ = _resolve("endpointSelector: {}\ningress: [{}]", namespace="default")
    assert resolved.endpoint("default/a").ingress.enforced is True


def test_ingress_named_port_and_redirect() -> None:
    spec = """
endpointSelector: {matchLabels: {app: b}}
ingress:
- fromEndpoints: [{matchLabels: {app: a}}]
  toPorts: [{ports: [{port: '8080', protocol: TCP}], rules: {http: [{method: GET}]}}]
- fromEndpoints: [{matchLabels: {app: a}}]
  toPorts: [{ports: [{port: '7000', protocol: TCP}], rules: {http: [{method: GET}]}}]
- toPorts: [{ports: [{port: '7000', protocol: TCP}]}]
- fromEndpoints: [{matchLabels: {app: a}}]
  toPorts: [{ports: [{port: http, protocol: UDP}]}]
"""
    resolved, _ = _resolve(spec)
    a = resolved.endpoint("default/a").endpoint.identity
    got = decide(resolved, "default/b", Direction.INGRESS, a, "TCP", 8080)
    assert got.verdict is Verdict.REDIRECT and got.l7[0].kind == "http"
    assert got.origins[0].path == "spec.ingress[0].toPorts[0]"
    # a plain L4 allow (any peer, port 7000) wins over the same L4 allow with L7
    got = decide(resolved, "default/b", Direction.INGRESS, a, "TCP", 7000)
    assert (got.verdict, got.origins[0].path) == (Verdict.ALLOW, "spec.ingress[2].toPorts[0]")
    assert decide(resolved, "default/b", Direction.INGRESS, a, "TCP", 9090).reason is Reason.DEFAULT_DENY
    # ingress named ports resolve against the destination's own ports (b: http = 8080)
    assert decide(resolved, "default/b", Direction.INGRESS, a, "UDP", 8080).verdict is Verdict.ALLOW
    assert decide(resolved, "default/b", Direction.INGRESS, a, "UDP", 9090).verdict is Verdict.DENY
    assert len(resolved.http_rule_sets) == 1  # two rules with the same HTTP rules share one rule set


def test_l7_union_of_rule_sets() -> None:
    spec = """
endpointSelector: {matchLabels: {app: b}}
ingress:
- toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]
- fromEndpoints: [{matchLabels: {app: a}}]
  toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: PUT}]}}]
"""
    resolved, _ = _resolve(spec)
    a = resolved.endpoint("default/a").endpoint.identity
    got = decide(resolved, "default/b", Direction.INGRESS, a, "TCP", 80)
    assert got.verdict is Verdict.REDIRECT and len(got.l7) == 2


def test_node_output() -> None:
    spec = (
        "endpointSelector: {matchLabels: {app: a}}\n"
        "egress: [{toFQDNs: [{matchPattern: '*.github.com'}]},"
        " {toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]}]"
    )
    resolved, allocator = _resolve(spec)
    cache = {e.prefix: e.identity for e in resolved.ipcache}
    assert cache["10.0.0.1/32"] == resolved.endpoint("default/a").endpoint.identity
    assert cache["fd00::1/128"] == cache["10.0.0.1/32"]
    assert cache["192.168.0.1/32"] == ReservedIdentity.HOST
    assert cache["192.168.0.2/32"] == ReservedIdentity.REMOTE_NODE
    assert cache["0.0.0.0/0"] == ReservedIdentity.WORLD_IPV4
    assert allocator.cidr_identity(ipaddress.ip_network("10.96.0.0/12")).id == cache["10.96.0.0/12"]
    assert [u.selector for u in resolved.fqdn_selectors] == ["*.github.com"]
    assert resolved.fqdn_selectors[0].users[0][0] == "default/a"
    assert [e.endpoint.key for e in resolved.endpoints] == ["default/a", "default/b"]  # node n1 only
    assert {i.id for i in resolved.identities} >= {1, 2, 9, 10, cache["10.0.0.0/8"]}


def test_learned_fqdn_ip_gets_selector_set_identity() -> None:
    allocator = IdentityAllocator()
    topology = build_topology(endpoints(TOPOLOGY), allocator)
    spec = (
        "endpointSelector: {matchLabels: {app: a}}\n"
        "egress: [{toFQDNs: [{matchName: api.github.com}, {matchPattern: '*.github.com'}],"
        " toPorts: [{ports: [{port: '443', protocol: TCP}]}]}]"
    )
    resolved = resolve(policies(_cnp(spec)), topology, allocator, "n1", {"140.82.112.5": ["api.github.com"]})
    peer = lookup_identity(resolved, "140.82.112.5")
    labels = allocator.lookup(peer)
    assert labels is not None and {"fqdn:api.github.com", "fqdn:*.github.com", "reserved:world"} <= set(
        labels.strings()
    )
    assert decide(resolved, "default/a", Direction.EGRESS, peer, "TCP", 443).verdict is ALLOW
    assert decide(resolved, "default/a", Direction.EGRESS, peer, "TCP", 80).verdict is DENY
    other = lookup_identity(resolved, "140.82.112.6")
    assert decide(resolved, "default/a", Direction.EGRESS, other, "TCP", 443).verdict is DENY
