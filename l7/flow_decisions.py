"""What decided a logged flow: the applied policy set, resolved at read time like ``policy trace`` does.

::

    policy set + endpoints file + identities-<node>.json + fqdn-cache-<node>.json
        ──► Resolver(node) ──► ResolvedNode ──► decide(endpoint, direction, peer, proto, port)
                                                      │ + the HTTP request / DNS query (l7.trace)
    Flow ──► direction (ingress | egress), decision, decided_by ("policy field-path", ...)

The flow logs stay what the datapath, Envoy and the DNS proxy wrote; nothing here touches them. The
answer is the one of the policy set as it is now (``observe`` reads logs of the past): when the set
changed since, an old flow is explained by the new set. The identity state file keeps the numbers
the datapath reported, so L3/L4 events are decided against the same identities.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from l7.endpoints import Endpoint
from l7.errors import L7GateError
from l7.flows import Flow
from l7.node_view import Inputs, load_inputs, node_view
from l7.resolve import Direction, Reason, ResolvedNode, Verdict, decide, lookup_identity
from l7.trace import HTTPRequest, evaluate_dns, evaluate_http


@dataclass(frozen=True)
class _Node:
    resolved: ResolvedNode
    by_ip: dict[str, Endpoint]


class Decider:
    """Fills in ``direction``, ``decision`` and ``decided_by`` of flows from one state directory.

    ``policies``/``endpoints``: the inputs the agents enforce (None: flows are returned as they are).
    Inputs are loaded once; :meth:`reload` loads them again (``observe --follow`` calls it when they
    change). Invalid inputs leave flows as they are and set :attr:`problem`."""

    def __init__(self, agent_dir: Path, policies: Path | None, endpoints: Path | None) -> None:
        self.agent_dir = agent_dir
        self.policies_path = policies
        self.endpoints_path = endpoints
        self.problem: str | None = None
        self._inputs: Inputs | None = None
        self._nodes: dict[str, _Node | None] = {}
        self.reload()

    def reload(self) -> None:
        self._nodes.clear()
        self._inputs = None
        self.problem = None
        try:
            self._inputs = load_inputs(self.policies_path, self.endpoints_path)
        except L7GateError as exc:
            self.problem = str(exc)

    def _node(self, node: str) -> _Node | None:
        if node in self._nodes:
            return self._nodes[node]
        out: _Node | None = None
        if self._inputs is not None:
            try:
                view = node_view(self.agent_dir, self._inputs, node, all_endpoints=True)
                by_ip = {ip: ep for ep in view.topology.endpoints for ip in ep.ips}
                out = _Node(view.resolved, by_ip)
            except (L7GateError, OSError, ValueError) as exc:
                self.problem = f"node {node}: {exc}"
        self._nodes[node] = out
        return out

    def annotate(self, flow: Flow) -> Flow:
        node = self._node(flow.node)
        if node is None:
            return flow
        src, dst = node.by_ip.get(flow.src_ip), node.by_ip.get(flow.dst_ip)
        order: list[tuple[Direction, Endpoint | None]]
        if flow.direction == "egress":
            order = [(Direction.EGRESS, src)]
        elif flow.direction == "ingress":
            order = [(Direction.INGRESS, dst)]
        else:  # HTTP through Envoy: the side whose rules redirected it; DNS: the source's egress
            order = [(Direction.EGRESS, src), (Direction.INGRESS, dst)]
        explained = None
        for direction, endpoint in order:
            if endpoint is None:
                continue
            explained = self._explain(node, flow, direction, endpoint)
            if explained is not None and (
                flow.type == "l3l4" or explained.decision == "l7" or len(order) == 1
            ):
                return explained
        return explained or flow

    def _explain(self, node: _Node, flow: Flow, direction: Direction, endpoint: Endpoint) -> Flow | None:
        try:
            policy = node.resolved.endpoint(endpoint.key).direction(direction)
        except KeyError:
            return None
        if direction is Direction.EGRESS:
            peer_ip, identity = flow.dst_ip, flow.dst_identity
        else:
            peer_ip, identity = flow.src_ip, flow.src_identity
        if identity is None:
            peer = node.by_ip.get(peer_ip)
            try:
                identity = peer.identity if peer is not None else lookup_identity(node.resolved, peer_ip)
            except ValueError:
                return None
        protocol = {"ICMPv6": "ICMPV6"}.get(flow.proto, flow.proto or "TCP")
        decision = decide(node.resolved, endpoint.key, direction, identity, protocol, flow.dst_port)
        by = tuple(str(o) for o in decision.origins)
        reason = str(decision.reason)
        if decision.reason is Reason.DEFAULT_DENY:
            by = policy.selected_by
        elif decision.verdict is Verdict.REDIRECT:
            entries = [
                e for e in policy.allows if e.l7 is not None and e.matches(identity, protocol, flow.dst_port)
            ]
            if flow.type == "http":
                request = HTTPRequest(flow.http_method, flow.http_path, flow.http_host or None)
                result = evaluate_http(
                    [e for e in entries if e.l7 is not None and e.l7.kind == "http"], request
                )
                if result.allowed and result.policy:
                    by = (f"{result.policy} {result.rule}",)
            elif flow.type == "dns":
                result = evaluate_dns(
                    [e for e in entries if e.l7 is not None and e.l7.kind == "dns"], flow.dns_qname
                )
                if result.allowed and result.policy:
                    by = (f"{result.policy} {result.rule}",)
        return replace(flow, direction=str(direction), decision=reason, decided_by=by)
