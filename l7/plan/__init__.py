"""Planning: resolved policy → the node's desired datapath state and L7 rule sets per proxy port.

Pure functions, used alike by the agent (per changed endpoint, :func:`endpoint_plan`), ``xds serve``
and tests (whole node, :func:`plan`). Layering: ``plan`` imports ``resolve`` and ``bpf``'s map
schemas, never the agent.
"""

from l7.plan.datapath import (
    AUDIT_PREFIX,
    PROTO_NUMBERS,
    DesiredState,
    EndpointState,
    IpcacheState,
    IPNetwork,
    PlanError,
    ProxyPorts,
    audit_key,
    datapath_direction,
    direction_decisions,
    endpoint_plan,
    endpoint_unions,
    host_plan,
    is_audit_key,
    l7_unions,
    plan,
    union_key,
)

__all__ = [
    "AUDIT_PREFIX",
    "PROTO_NUMBERS",
    "DesiredState",
    "EndpointState",
    "IPNetwork",
    "IpcacheState",
    "PlanError",
    "ProxyPorts",
    "audit_key",
    "datapath_direction",
    "direction_decisions",
    "endpoint_plan",
    "endpoint_unions",
    "host_plan",
    "is_audit_key",
    "l7_unions",
    "plan",
    "union_key",
]
