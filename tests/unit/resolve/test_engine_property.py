# ruff: noqa: E501  (policy fixtures are one-line YAML documents, easier to read whole)
"""The incremental engine equals a from-scratch resolution, after any sequence of changes.

Hypothesis draws a sequence of changes — policies added, edited and removed (L3/L4, CIDR with except,
entities, deny, L7 HTTP and DNS, toFQDNs, toServices, named ports, cluster-wide), endpoints added,
relabelled, moved between nodes and removed, Services changed, nodes relabelled, IPs learned from DNS
answers and forgotten — and after every step compares :meth:`Engine.snapshot` with
:func:`l7.resolve.resolve` of the same inputs (sharing the identity allocator, so identity numbers are
comparable). It also checks that :meth:`Engine.take_changes` named every endpoint and ipcache entry
that differs from the previous step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resolve_helpers import policies

from l7.endpoints import EndpointsFile, build_topology, parse_endpoints
from l7.identity import IdentityAllocator
from l7.policy.documents import Policy
from l7.resolve import ResolvedNode, resolve
from l7.resolve.engine import Engine

NODE = "w1"


def _cnp(name: str, spec: str, namespace: str | None = "a") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    if namespace is None:
        return f"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n{body}\n"
    return (
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n"
    )


# Each key has a few variants; a step picks a variant (an add or an edit) or removes the key.
VARIANTS: dict[str, list[str]] = {
    "l4": [
        _cnp(
            "l4",
            "endpointSelector: {matchLabels: {app: web}}\ningress:\n- fromEndpoints: [{matchLabels: {app: db}}]\n  toPorts: [{ports: [{port: '80', protocol: TCP}]}]",
        ),
        _cnp(
            "l4",
            "endpointSelector: {matchLabels: {app: web}}\ningress:\n- fromEndpoints: [{matchLabels: {app: api}}]",
        ),
        _cnp(
            "l4",
            "endpointSelector: {}\negress:\n- toEndpoints: [{matchLabels: {app: web}}]\n  toPorts: [{ports: [{port: '8000', endPort: 8100, protocol: ANY}]}]",
        ),
    ],
    "cidr": [
        _cnp(
            "cidr",
            "endpointSelector: {matchLabels: {app: api}}\negress:\n- toCIDRSet: [{cidr: 198.18.0.0/16, except: [198.18.1.0/24]}]",
        ),
        _cnp(
            "cidr",
            "endpointSelector: {matchLabels: {app: api}}\negress:\n- toCIDR: [198.18.2.0/24, 10.9.0.1/32]\n  toPorts: [{ports: [{port: '443'}]}]",
        ),
    ],
    "deny": [
        _cnp(
            "deny",
            "endpointSelector: {}\negressDeny:\n- toEntities: [world]\n  toPorts: [{ports: [{port: '25'}]}]",
        ),
        _cnp(
            "deny",
            "endpointSelector: {matchLabels: {app: db}}\ningressDeny:\n- fromEndpoints: [{matchLabels: {app: web}}]",
        ),
    ],
    "http": [
        _cnp(
            "http",
            "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoints: [{}]\n  toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules:\n      http: [{method: GET, path: /public}]",
        ),
        _cnp(
            "http",
            "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoints: [{matchLabels: {app: web}}]\n  toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules:\n      http: [{method: POST, path: '/v[0-9]+/.*', headers: ['X-Token: abc']}]",
        ),
    ],
    "dns": [
        _cnp(
            "dns",
            "endpointSelector: {matchLabels: {app: web}}\negress:\n- toEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': kube-system}}]\n  toPorts:\n  - ports: [{port: '53', protocol: ANY}]\n    rules:\n      dns: [{matchPattern: '*.example.com'}]\n- toFQDNs: [{matchPattern: '*.example.com'}, {matchName: api.github.com}]",
        ),
        _cnp(
            "dns",
            "endpointSelector: {matchLabels: {app: web}}\negress:\n- toFQDNs: [{matchName: x.example.com}]\n  toPorts: [{ports: [{port: '443'}]}]",
        ),
    ],
    "fqdn2": [
        _cnp(
            "fqdn2",
            "endpointSelector: {matchLabels: {app: api}}\negress:\n- toFQDNs: [{matchPattern: '**.github.com'}]",
            namespace="b",
        ),
        _cnp("fqdn2", "endpointSelector: {}\negress:\n- toFQDNs: [{matchPattern: '*'}]", namespace="b"),
    ],
    "svc": [
        _cnp(
            "svc",
            "endpointSelector: {}\negress:\n- toServices: [{k8sService: {serviceName: backend, namespace: a}}]",
        ),
        _cnp(
            "svc",
            "endpointSelector: {}\negress:\n- toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: x}}}}]",
        ),
    ],
    "named": [
        _cnp(
            "named",
            "endpointSelector: {}\negress:\n- toEndpoints: [{matchLabels: {app: db}}]\n  toPorts: [{ports: [{port: http, protocol: TCP}]}]",
        ),
        _cnp(
            "named",
            "endpointSelector: {matchLabels: {app: db}}\ningress:\n- toPorts: [{ports: [{port: http}]}]",
        ),
    ],
    "cw": [
        _cnp(
            "cw",
            "endpointSelector: {matchLabels: {app: web}}\negress:\n- toEndpoints: [{}]\n- toEntities: [kube-apiserver, host, remote-node]",
            namespace=None,
        ),
        _cnp(
            "cw",
            "endpointSelector: {}\ningress:\n- fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [api, db]}]}]\n- fromNodes: [{matchLabels: {role: edge}}]",
            namespace=None,
        ),
        _cnp(
            "cw",
            "endpointSelector: {}\nenableDefaultDeny: {egress: false}\negress:\n- toCIDR: [198.18.0.0/15]",
            namespace=None,
        ),
    ],
    "host": [  # host policies (nodeSelector): the local node's host endpoint
        _cnp(
            "host",
            "nodeSelector: {}\ningress:\n- fromEntities: [cluster]\n  toPorts: [{ports: [{port: '22', protocol: TCP}]}]",
            namespace=None,
        ),
        _cnp(
            "host",
            "nodeSelector: {matchLabels: {zone: z1}}\ningress:\n- fromEndpoints: [{matchLabels: {app: web}}]\negress:\n- toCIDR: [198.18.0.0/16]\negressDeny:\n- toEntities: [world]\n  toPorts: [{ports: [{port: '25'}]}]",
            namespace=None,
        ),
        _cnp(
            "host",
            "nodeSelector: {matchExpressions: [{key: zone, operator: DoesNotExist}]}\nenableDefaultDeny: {ingress: false}\ningress:\n- fromEndpoints: [{matchLabels: {app: api}}]\n  toPorts: [{ports: [{port: http}]}]",
            namespace=None,
        ),
    ],
    "nsb": [
        _cnp(
            "nsb",
            "endpointSelector: {}\ningress:\n- fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': a}}]",
            namespace="b",
        ),
        _cnp(
            "nsb",
            "endpointSelector: {matchLabels: {app: web}}\negress:\n- toEndpoints: [{matchLabels: {app: web}}]",
            namespace="b",
        ),
    ],
}
POOL: dict[str, list[Policy]] = {
    key: [policies(text)[0] for text in texts] for key, texts in VARIANTS.items()
}

NAMES = ("ep0", "ep1", "ep2", "ep3", "ep4", "ep5")
APPS = ("web", "api", "db")
DNS_NAMES = ("api.github.com", "x.example.com", "y.example.com", "a.b.github.com", "other.net")
LEARN_IPS = ("198.18.0.5", "198.18.1.7", "198.18.2.9", "198.19.0.1", "203.0.113.4", "fd00:18::5")


@dataclass
class World:
    policies: dict[str, Policy] = field(default_factory=dict)
    endpoints: dict[str, dict[str, object]] = field(default_factory=dict)
    service_variant: int = 0
    node_labels: int = 0
    learned: dict[str, frozenset[str]] = field(default_factory=dict)

    def file(self) -> EndpointsFile:
        services: list[dict[str, object]] = [
            {
                "name": "backend",
                "namespace": "a",
                "backends": ["10.9.0.1"] if self.service_variant else ["10.9.0.2"],
            },
            {
                "name": "front",
                "namespace": "b",
                "labels": {"tier": "x"},
                "selector": {"app": APPS[self.service_variant % 3]},
            },
        ]
        nodes = [
            {"name": "w1", "ips": ["192.168.0.1"], "labels": {"zone": "z1"} if self.node_labels else {}},
            {"name": "w2", "ips": ["192.168.0.2"], "labels": {"role": "edge"} if self.node_labels else {}},
        ]
        return parse_endpoints(
            {
                "endpoints": sorted(self.endpoints.values(), key=lambda e: str(e["name"])),
                "nodes": nodes,
                "services": services,
                "namespaces": {"kube-system": {"labels": {"team": "infra"}}},
            }
        )


endpoint_st = st.fixed_dictionaries(
    {
        "name": st.sampled_from(NAMES),
        "namespace": st.sampled_from(("a", "a", "b", "kube-system")),
        "app": st.sampled_from(APPS),
        "node": st.sampled_from((NODE, NODE, "w2", None)),
        "named": st.booleans(),
        "port": st.sampled_from((80, 8080)),
    }
)

step_st = st.one_of(
    st.tuples(st.just("policy"), st.sampled_from(sorted(POOL)), st.integers(0, 2)),
    st.tuples(st.just("unpolicy"), st.sampled_from(sorted(POOL))),
    st.tuples(st.just("endpoint"), endpoint_st),
    st.tuples(st.just("unendpoint"), st.sampled_from(NAMES)),
    st.tuples(st.just("port"), st.sampled_from(NAMES), st.sampled_from((80, 8080, None))),
    st.tuples(st.just("services"), st.integers(0, 2)),
    st.tuples(st.just("nodes"), st.integers(0, 1)),
    st.tuples(
        st.just("learn"),
        st.sampled_from(LEARN_IPS),
        st.sets(st.sampled_from(DNS_NAMES), min_size=1, max_size=2),
    ),
    st.tuples(st.just("forget"), st.sampled_from(LEARN_IPS)),
)


def _apply(world: World, step: tuple[object, ...]) -> None:
    kind = step[0]
    if kind == "policy":
        variants = POOL[str(step[1])]
        world.policies[str(step[1])] = variants[int(step[2]) % len(variants)]  # type: ignore[call-overload]
    elif kind == "unpolicy":
        world.policies.pop(str(step[1]), None)
    elif kind == "endpoint":
        spec = step[1]
        assert isinstance(spec, dict)
        index = NAMES.index(spec["name"])
        world.endpoints[spec["name"]] = {
            "name": spec["name"],
            "namespace": spec["namespace"],
            "labels": {"app": spec["app"]},
            "ips": [f"10.0.0.{index + 1}", f"fd00::{index + 1}"],
            "node": spec["node"],
            "ports": {"http": spec["port"]} if spec["named"] else {},
        }
    elif kind == "port":  # only the named port changes (the identity stays)
        ep = world.endpoints.get(str(step[1]))
        if ep is not None:
            ep["ports"] = {} if step[2] is None else {"http": step[2]}
    elif kind == "unendpoint":
        world.endpoints.pop(str(step[1]), None)
    elif kind == "services":
        world.service_variant = int(step[1])  # type: ignore[call-overload]
    elif kind == "nodes":
        world.node_labels = int(step[1])  # type: ignore[call-overload]
    elif kind == "learn":
        world.learned[str(step[1])] = frozenset(step[2])  # type: ignore[arg-type]
    elif kind == "forget":
        world.learned.pop(str(step[1]), None)


def _oracle(world: World, allocator: IdentityAllocator) -> ResolvedNode:
    topology = build_topology(world.file(), allocator)
    ordered = [world.policies[k] for k in sorted(world.policies, key=lambda k: world.policies[k].key)]
    return resolve(ordered, topology, allocator, NODE, world.learned)


def _assert_same(got: ResolvedNode, want: ResolvedNode) -> None:
    assert {r.endpoint.key: r for r in got.endpoints} == {r.endpoint.key: r for r in want.endpoints}
    assert got.ipcache == want.ipcache
    assert got.fqdn_selectors == want.fqdn_selectors
    assert got.http_rule_sets == want.http_rule_sets
    assert got.dns_rule_sets == want.dns_rule_sets
    assert got.identities == want.identities
    assert got.host == want.host


initial_st = st.tuples(
    st.lists(st.tuples(st.just("endpoint"), endpoint_st), min_size=3, max_size=8),
    st.lists(st.tuples(st.just("policy"), st.sampled_from(sorted(POOL)), st.integers(0, 2)), max_size=8),
    st.lists(
        st.tuples(
            st.just("learn"),
            st.sampled_from(LEARN_IPS),
            st.sets(st.sampled_from(DNS_NAMES), min_size=1, max_size=2),
        ),
        max_size=4,
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial_st, st.lists(step_st, min_size=1, max_size=30))
def test_engine_equals_from_scratch(
    initial: tuple[list[tuple[object, ...]], ...], steps: list[tuple[object, ...]]
) -> None:
    """A random starting world (applied at once, then compared), then single changes one by one."""
    allocator = IdentityAllocator()
    engine = Engine(allocator, NODE)
    world = World()
    before: ResolvedNode | None = None
    first: list[tuple[object, ...]] = [s for part in initial for s in part]
    for i, step in enumerate([("batch",), *steps]):
        if i == 0:
            for s in first:
                _apply(world, s)
        else:
            _apply(world, step)
        engine.set_policies(world.policies.values())
        engine.set_topology(build_topology(world.file(), allocator))
        engine.set_learned(world.learned)
        changes = engine.take_changes()
        got = engine.snapshot()
        _assert_same(got, _oracle(world, allocator))
        if before is not None:
            was = {r.endpoint.key: r for r in before.endpoints}
            now = {r.endpoint.key: r for r in got.endpoints}
            differ = {k for k in was.keys() | now.keys() if was.get(k) != now.get(k)}
            if before.host != got.host:
                differ.add(f"reserved:host/{NODE}")
            assert differ <= changes.endpoints
            old_ip = {e.prefix: e.identity for e in before.ipcache}
            new_ip = {e.prefix: e.identity for e in got.ipcache}
            ip_differ = {p for p in old_ip.keys() | new_ip.keys() if old_ip.get(p) != new_ip.get(p)}
            assert ip_differ == {p for p, i in changes.ipcache.items() if old_ip.get(p) != i}
        before = got


def test_engine_one_change_touches_only_what_it_selects() -> None:
    """A policy of namespace ``b`` re-resolves only the endpoints of ``b``."""
    allocator = IdentityAllocator()
    engine = Engine(allocator, NODE)
    world = World()
    for i, name in enumerate(NAMES):
        _apply(
            world,
            (
                "endpoint",
                {
                    "name": name,
                    "namespace": "ab"[i % 2],
                    "app": APPS[i % 3],
                    "node": NODE,
                    "named": False,
                    "port": 80,
                },
            ),
        )
    engine.set_topology(build_topology(world.file(), allocator))
    engine.set_policies(POOL["l4"][:1])
    engine.take_changes()
    engine.upsert_policy(POOL["nsb"][1])
    changes = engine.take_changes()
    assert changes.endpoints == {"b/ep3"}  # the only app=web pod of namespace b
    assert not changes.ipcache
