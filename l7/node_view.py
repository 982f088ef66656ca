"""A node's resolved policy, computed from the agent's inputs and identity state file — what the views
(``endpoint list``, ``identity list``, ``policy selectors``) and ``observe``'s decisions read.

::

    policy set + endpoints file ─┐
    identities-<node>.json ──────┼─► Resolver(node) ──► NodeView(resolved, topology, allocator)
    fqdn-cache-<node>.json ──────┘      (the pure resolver the incremental engine is checked against)

Nothing talks to the running agent: the identity state file keeps the numbers the agent (and so the
datapath) uses, and the resolver is deterministic, so the result is the agent's own view of its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from l7.endpoints import EndpointsFile, Topology, build_topology, load_endpoints
from l7.errors import L7GateError
from l7.fqdn_state import read_state, snapshot_path
from l7.identity import IdentityAllocator
from l7.policy.documents import Policy, load_paths
from l7.resolve import ResolvedNode, Resolver


class NodeViewError(L7GateError):
    """The inputs cannot be read or do not validate."""


@dataclass(frozen=True)
class Inputs:
    policies: tuple[Policy, ...]
    endpoints: EndpointsFile


@dataclass(frozen=True)
class NodeView:
    node: str
    resolved: ResolvedNode
    topology: Topology
    allocator: IdentityAllocator


def load_inputs(policies: Path | None, endpoints: Path | None) -> Inputs:
    """The policy set (a missing path is an empty set: a lab without policies) and the endpoints file."""
    if policies is None or endpoints is None:
        raise NodeViewError(
            "the policy set and endpoints file are not known (give --policies and --endpoints)"
        )
    loaded: Sequence[Policy] = ()
    if policies.exists():
        result = load_paths([policies])
        if result.errors:
            count = len(result.errors)
            raise NodeViewError(
                f"the policy set {policies} has {count} error(s): `l7gate policy validate` lists them"
            )
        loaded = result.policies
    return Inputs(tuple(loaded), load_endpoints(endpoints))


def node_view(agent_dir: Path, inputs: Inputs, node: str, *, all_endpoints: bool = False) -> NodeView:
    """The resolved policy of ``node`` (``all_endpoints``: every endpoint of the cluster, as seen from
    that node; else the node's own endpoints)."""
    allocator = IdentityAllocator.load(agent_dir / f"identities-{node}.json")
    topology = build_topology(inputs.endpoints, allocator)
    resolver = Resolver(allocator, node, all_endpoints=all_endpoints)
    resolved = resolver.resolve(inputs.policies, topology, learned_ips(agent_dir, node))
    return NodeView(node, resolved, topology, allocator)


def learned_ips(agent_dir: Path, node: str) -> dict[str, list[str]]:
    """IP → DNS names, from the node's saved FQDN cache (``fqdn-cache-<node>.json``)."""
    data = read_state(snapshot_path(agent_dir, node))  # the snapshot with its journals
    if data is None:
        return {}
    out: dict[str, list[str]] = {}
    for name, entries in (data.get("names") or {}).items():
        for entry in entries:
            out.setdefault(str(entry[0]), []).append(str(name))
    return out
