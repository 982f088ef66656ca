"""The addressing plan: a pure function from (topology, lab name, lab index) to names and addresses.

Lab ``i`` (0..55) owns ``10.(200+i).0.0/16`` and ``fd00:7e57:i::/48``, so labs never overlap::

    segment                      IPv4                      IPv6
    fabric (bridge br0)          10.X.0.1/24               fd00:7e57:i:0::1/64
    node k uplink                10.X.0.(10+k)/24          fd00:7e57:i:0::(10+k)/64
    node k router (on lo)        10.X.(k+1).1/32           fd00:7e57:i:(k+1)::1/128
    node k pods (n-th)           10.X.(k+1).(10+n)/32      fd00:7e57:i:(k+1)::(10+n)/128
    world host m (default)       10.X.250.(10+m)/32        fd00:7e57:i:fa::(10+m)/128

with X = 200+i. Pod CIDR of node k: ``10.X.(k+1).0/24`` and ``fd00:7e57:i:(k+1)::/64``. Pods reach their
node through a veth (``lxc<hash>`` in the node, ``eth0`` in the pod): default route via the node's router
IP (IPv4) and ``fe80::1`` (IPv6, on every host-side veth); the node routes each pod's /32 and /128 to its
veth. Nodes route the other nodes' pod CIDRs via their uplink addresses; world hosts hang off the fabric on
their own veth (``fabric`` side ``169.254.1.1`` / ``fe80::1``) and route everything via it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

from l7.lab.errors import TopologyError, TopologyIssue
from l7.lab.topology import Pod, Topology

MAX_LABS = 56
MAX_PODS_PER_NODE = 240
MAX_WORLD_HOSTS = 240
GATEWAY_V4 = "169.254.1.1"  # the fabric's side of each world host's veth
GATEWAY_V6 = "fe80::1"  # every host-side veth (pods) and fabric-side veth (world hosts)
NODE_UPLINK = "uplink"
NODE_ROUTER_IF = "lo"  # the node's router IPs (Cilium's cilium_host addresses); no dummy links here
FABRIC_BRIDGE = "br0"


def _v6(text: str) -> str:
    """The canonical spelling of an IPv6 address (``fd00:7e57:0:1::a``)."""
    return str(ipaddress.IPv6Address(text))


def _hash(*parts: str) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class NodePlan:
    name: str
    index: int
    netns: str
    uplink_v4: str
    uplink_v6: str
    router_v4: str
    router_v6: str
    pod_cidr_v4: str
    pod_cidr_v6: str
    fabric_if: str  # the uplink veth's peer in the fabric namespace

    @property
    def ips(self) -> list[str]:
        return [self.uplink_v4, self.uplink_v6, self.router_v4, self.router_v6]


@dataclass(frozen=True)
class PodPlan:
    name: str
    namespace: str
    node: str
    netns: str
    host_if: str  # host-side veth in the node namespace
    v4: str
    v6: str | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ips(self) -> list[str]:
        return [self.v4] if self.v6 is None else [self.v4, self.v6]


@dataclass(frozen=True)
class WorldPlan:
    name: str
    netns: str
    fabric_if: str
    v4: list[str]
    v6: list[str]

    @property
    def ips(self) -> list[str]:
        return [*self.v4, *self.v6]


@dataclass(frozen=True)
class Plan:
    lab: str
    index: int
    fabric_netns: str
    fabric_v4: str
    fabric_v6: str
    underlay_v4: str
    underlay_v6: str
    nodes: list[NodePlan] = field(default_factory=list)
    pods: list[PodPlan] = field(default_factory=list)
    worlds: list[WorldPlan] = field(default_factory=list)

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def pod(self, key: str) -> PodPlan:
        return next(p for p in self.pods if p.key == key)

    def world(self, name: str) -> WorldPlan:
        return next(w for w in self.worlds if w.name == name)

    @property
    def all_netns(self) -> list[str]:
        """Every namespace of the lab, in creation order."""
        return [
            self.fabric_netns,
            *(n.netns for n in self.nodes),
            *(p.netns for p in self.pods),
            *(w.netns for w in self.worlds),
        ]


def netns_prefix(lab: str) -> str:
    return f"l7g-{lab}-"


def plan(topo: Topology, lab: str, index: int) -> Plan:
    """Names and addresses for every namespace, interface and workload of ``topo`` in lab ``index``."""
    if not 0 <= index < MAX_LABS:
        raise ValueError(f"lab index {index} out of range 0..{MAX_LABS - 1}")
    x = 200 + index
    v6 = f"fd00:7e57:{index:x}"
    prefix = netns_prefix(lab)
    issues: list[TopologyIssue] = []

    nodes = [
        NodePlan(
            name=n.name,
            index=k,
            netns=prefix + n.name,
            uplink_v4=f"10.{x}.0.{10 + k}",
            uplink_v6=_v6(f"{v6}:0::{10 + k:x}"),
            router_v4=f"10.{x}.{k + 1}.1",
            router_v6=_v6(f"{v6}:{k + 1:x}::1"),
            pod_cidr_v4=f"10.{x}.{k + 1}.0/24",
            pod_cidr_v6=str(ipaddress.IPv6Network(f"{v6}:{k + 1:x}::/64")),
            fabric_if=f"up-{_hash(n.name)}",
        )
        for k, n in enumerate(topo.nodes)
    ]
    by_node = {n.name: n for n in nodes}

    all_pods: list[Pod] = topo.all_pods()
    name_count: dict[str, int] = {}
    for pod in all_pods:
        name_count[pod.name] = name_count.get(pod.name, 0) + 1
    per_node: dict[str, int] = {}
    pods: list[PodPlan] = []
    for pod in all_pods:
        node = by_node[topo.node_of(pod)]
        n = per_node.get(node.name, 0)
        per_node[node.name] = n + 1
        if n >= MAX_PODS_PER_NODE:
            issues.append(TopologyIssue("pods", f"node {node.name} has more than {MAX_PODS_PER_NODE} pods"))
            break
        unique = name_count[pod.name] == 1
        pods.append(
            PodPlan(
                name=pod.name,
                namespace=pod.namespace,
                node=node.name,
                netns=prefix + (pod.name if unique else f"{pod.namespace}-{pod.name}"),
                host_if=f"lxc{_hash(pod.namespace, pod.name)}",
                v4=f"10.{x}.{node.index + 1}.{10 + n}",
                v6=_v6(f"{v6}:{node.index + 1:x}::{10 + n:x}") if pod.ipv6 else None,
            )
        )

    if len(topo.world) > MAX_WORLD_HOSTS:
        issues.append(TopologyIssue("world", f"at most {MAX_WORLD_HOSTS} world hosts"))
    worlds = [
        WorldPlan(
            name=w.name,
            netns=f"{prefix}world-{w.name}",
            fabric_if=f"wo-{_hash(w.name)}",
            v4=w.ipv4 if w.ipv4 is not None else [f"10.{x}.250.{10 + m}"],
            v6=w.ipv6 if w.ipv6 is not None else [_v6(f"{v6}:fa::{10 + m:x}")],
        )
        for m, w in enumerate(topo.world[:MAX_WORLD_HOSTS])
    ]

    result = Plan(
        lab=lab,
        index=index,
        fabric_netns=prefix + "fabric",
        fabric_v4=f"10.{x}.0.1",
        fabric_v6=_v6(f"{v6}:0::1"),
        underlay_v4=f"10.{x}.0.0/24",
        underlay_v6=str(ipaddress.IPv6Network(f"{v6}:0::/64")),
        nodes=nodes,
        pods=pods,
        worlds=worlds,
    )
    seen: dict[str, str] = {}
    owners = [("fabric", result.fabric_netns)]
    owners += [(f"node {n.name}", n.netns) for n in nodes]
    owners += [(f"pod {p.key}", p.netns) for p in pods]
    owners += [(f"world host {w.name}", w.netns) for w in worlds]
    for owner, ns in owners:
        if ns in seen:
            issues.append(TopologyIssue("", f"{owner} and {seen[ns]} would share the namespace name {ns}"))
        seen[ns] = owner
    if issues:
        raise TopologyError(f"lab {lab}", issues)
    return result
