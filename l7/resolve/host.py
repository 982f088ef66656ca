"""The host endpoint: a node as the subject of host policies (Cilium's host firewall).

Each node has one host endpoint. Its identity is ``reserved:host`` (1) — from the node itself every
local address is ``host`` — and its labels are ``reserved:host`` plus the Node's labels with source
``k8s``, so a ``nodeSelector`` (cluster-wide policies only) selects it like Cilium's does. Only
``nodeSelector`` rules apply to it (:func:`l7.resolve.rules.contribute` with ``host=True``); its
resolution is a :class:`~l7.resolve.types.ResolvedEndpoint` like a pod's, kept apart from the pods
(:attr:`~l7.resolve.types.ResolvedNode.host`) because it has no interface of its own: the datapath
enforces it on the node's uplink and on the host side of every pod's veth.

As in Cilium, a host with no host policy selecting it is not enforced (default allow), and host
policies are L3/L4 only (validation refuses ``toPorts[].rules`` under a ``nodeSelector``).
"""

from __future__ import annotations

from collections.abc import Iterable

from l7.endpoints import Endpoint, Node
from l7.identity import ReservedIdentity
from l7.labels import K8S, Label, LabelSet

#: The namespace part of a host endpoint's key (``reserved:host/<node>``): no pod namespace has a colon.
HOST_NAMESPACE = "reserved:host"


def host_labels(node: Node) -> LabelSet:
    """``reserved:host`` plus ``k8s:<key>=<value>`` for each of the node's labels."""
    return LabelSet.of([ReservedIdentity.HOST.label, *(Label(K8S, k, v) for k, v in node.labels)])


def host_endpoint(nodes: Iterable[Node], node: str | None) -> Endpoint | None:
    """The host endpoint of ``node`` (None when there is no local node or it is not in ``nodes``)."""
    if node is None:
        return None
    for n in nodes:
        if n.name == node:
            return Endpoint(n.name, HOST_NAMESPACE, host_labels(n), n.ips, int(ReservedIdentity.HOST), n.name)
    return None


def is_host_key(key: str) -> bool:
    """Whether ``key`` names a host endpoint."""
    return key.startswith(HOST_NAMESPACE + "/")
