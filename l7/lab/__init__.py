"""The lab: a Kubernetes-like cluster on one machine, built from network namespaces.

Data flow::

    topology.yaml ──► topology (pydantic, field-path errors)
                          │
                          ▼
                      addressing.plan (pure: names, interfaces, addresses of lab i)
                          │
          ┌───────────────┼──────────────────┬─────────────────────┐
          ▼               ▼                  ▼                     ▼
    netns (ip batches)  dns (dnsmasq conf,  certs (openssl)   procs (setsid servers,
    fabric/node/pod/    resolv.conf)                          recorded PIDs) ──► ready (probes)
    world namespaces        │                                      │
          └──────────► state.json (/run/l7gate/labs/<lab>/): everything created, for `down`
                                      │
                                      ▼
                            endpoints() ──► the node agent (start_node_agents hook)

Public API: :class:`Lab` (``Lab.up``, ``Lab.load``, ``lab.exec``, ``lab.down``), :func:`down`,
:func:`endpoints`, :func:`datapath`, :func:`load_topology`, :func:`start_node_agents`.
"""

from l7.lab.errors import LabError, TopologyError, TopologyIssue
from l7.lab.lab import Lab, down, endpoints, start_node_agents
from l7.lab.layout import datapath
from l7.lab.state import DEFAULT_LAB, LabState, list_labs
from l7.lab.topology import Topology, load_topology, parse_topology

__all__ = [
    "DEFAULT_LAB",
    "Lab",
    "LabError",
    "LabState",
    "Topology",
    "TopologyError",
    "TopologyIssue",
    "datapath",
    "down",
    "endpoints",
    "list_labs",
    "load_topology",
    "parse_topology",
    "start_node_agents",
]
