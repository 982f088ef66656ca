"""Where a lab's workloads live, as the node agents see them (derived from the lab's state)."""

from __future__ import annotations

from typing import Any

from l7.lab.addressing import NODE_UPLINK
from l7.lab.state import LabState


def datapath(state: LabState) -> dict[str, Any]:
    """Where the lab's workloads live, for the node agent that attaches to them::

    {"nodes": [{name, netns, uplink, podCIDRs, routerIPs, uplinkIPs}],
     "pods": [{name, namespace, node, netns, interface, ips}],   # interface: host-side veth in the node
     "world": [{name, netns, ips}], "fabric": {netns, ips}, "dns": {pod, ips}}
    """
    plan = state.plan()
    dns_pod = plan.pod(state.topology_model().dns_pod().key)
    return {
        "nodes": [
            {
                "name": n.name,
                "netns": n.netns,
                "uplink": NODE_UPLINK,
                "podCIDRs": [n.pod_cidr_v4, n.pod_cidr_v6],
                "routerIPs": [n.router_v4, n.router_v6],
                "uplinkIPs": [n.uplink_v4, n.uplink_v6],
            }
            for n in plan.nodes
        ],
        "pods": [
            {
                "name": p.name,
                "namespace": p.namespace,
                "node": p.node,
                "netns": p.netns,
                "interface": p.host_if,
                "ips": p.ips,
            }
            for p in plan.pods
        ],
        "world": [{"name": w.name, "netns": w.netns, "ips": w.ips} for w in plan.worlds],
        "fabric": {"netns": plan.fabric_netns, "ips": [plan.fabric_v4, plan.fabric_v6]},
        "dns": {"pod": dns_pod.key, "ips": dns_pod.ips},
    }
