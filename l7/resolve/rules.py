"""Stage 1: one policy × one endpoint → selector-level entries (no identities yet).

Pure and memoisable: the result depends only on the policy and on the endpoint's labels and named
ports. Cilium semantics encoded here:

* A direction is "enabled" by a rule when its ``ingress``/``ingressDeny`` (``egress``/``egressDeny``)
  list is non-empty — Cilium tests ``len(r.Egress) > 0 || len(r.EgressDeny) > 0``
  (``pkg/policy/repository.go``, ``computePolicyEnforcementAndRules``), and its API doc says of
  ``Egress``: "If omitted or empty, this rule does not apply at egress". So ``egress: []`` on its own
  neither enables nor changes anything.
* Default deny follows ``enableDefaultDeny.<dir>``, which defaults to true for an enabled direction.
* ``egress: [{}]`` (a rule with neither L3 nor L4 fields) enables default deny and allows nothing.
  Seed 003 calls a policy with ``egress: [{}]`` "allow-all-egress"; under Cilium it is the opposite —
  it puts every selected pod into egress default deny (which is what the seed's own hubble output of
  ``policy-verdict:none EGRESS DENIED`` shows).
* An explicitly empty peer list (``toEntities: []``, ``toEndpoints: []``) selects nothing, so the rule
  allows nothing; a rule with ``toPorts``/``icmps`` and no L3 field at all allows every peer.
* A rule with L3 and no ``toPorts``/``icmps`` allows every protocol and port (ICMP included).
* ``fromNodes``/``toNodes`` select remote nodes by label (never the local host); ``toServices`` selects
  the pods of a Service with a selector, or the backend IPs of one without (expanded in stage 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from l7.labels import RESERVED, LabelSet
from l7.policy import model
from l7.policy.documents import Policy
from l7.policy.icmp import icmp_type
from l7.policy.ports import parse_port
from l7.resolve.types import ANY_PROTOCOL, ICMP_PROTOCOLS, L4_PROTOCOLS, L7RuleSet, Origin, SelectorEntry
from l7.selectors import (
    WILDCARD,
    EntitySelector,
    LabelSelector,
    Requirement,
    Selector,
    cidr_selector,
    fqdn_selector,
    label_selector,
    node_selector,
    peer_selector,
    service_selector,
    subject_selector,
)


@dataclass(frozen=True)
class DirectionContribution:
    enabled: bool = False
    default_deny: bool = False
    allows: tuple[SelectorEntry, ...] = ()
    denies: tuple[SelectorEntry, ...] = ()


@dataclass(frozen=True)
class Contribution:
    """What one policy contributes to one endpoint."""

    policy: str
    selects: bool
    ingress: DirectionContribution = DirectionContribution()
    egress: DirectionContribution = DirectionContribution()


NOTHING = DirectionContribution()


def contribute(
    policy: Policy, labels: LabelSet, ports: tuple[tuple[str, int], ...], *, host: bool = False
) -> Contribution:
    """The entries ``policy`` gives an endpoint with identity ``labels`` and named ``ports``.

    ``host``: the endpoint is a node's host endpoint (``l7.resolve.host``): only ``nodeSelector``
    rules apply to it, and ``endpointSelector`` rules never do (as Cilium: a rule selects either pods
    or hosts)."""
    ingress: list[DirectionContribution] = []
    egress: list[DirectionContribution] = []
    for rule, path in zip(policy.rules, policy.rule_paths, strict=True):
        if not _subject_matches(rule, policy.namespace, labels, host):
            continue
        edd = rule.enable_default_deny
        ingress.append(
            _direction(
                policy,
                path,
                "ingress",
                allows=rule.ingress,
                denies=rule.ingress_deny,
                default_deny=edd.ingress if edd else None,
                ports=ports,
            )
        )
        egress.append(
            _direction(
                policy,
                path,
                "egress",
                allows=rule.egress,
                denies=rule.egress_deny,
                default_deny=edd.egress if edd else None,
                ports=ports,
            )
        )
    if not ingress:
        return Contribution(policy.key, False)
    return Contribution(policy.key, True, _merge(ingress), _merge(egress))


def _subject_matches(rule: model.Rule, namespace: str | None, labels: LabelSet, host: bool) -> bool:
    if host:
        return rule.node_selector is not None and host_subject_selector(rule.node_selector).matches(labels)
    if rule.endpoint_selector is None:  # host policies (nodeSelector) do not apply to endpoints
        return False
    return subject_selector(rule.endpoint_selector, namespace).matches(labels)


def host_subject_selector(sel: model.EndpointSelector) -> LabelSelector:
    """The hosts a ``nodeSelector`` rule applies to: the user's requirements (keys without a source
    match any source; a host carries its Node labels as ``k8s:``) plus ``reserved:host Exists``."""
    compiled = label_selector(sel)
    return LabelSelector((*compiled.requirements, Requirement(RESERVED, "host", model.Operator.EXISTS)))


def _merge(parts: list[DirectionContribution]) -> DirectionContribution:
    return DirectionContribution(
        any(p.enabled for p in parts),
        any(p.default_deny for p in parts),
        tuple(e for p in parts for e in p.allows),
        tuple(e for p in parts for e in p.denies),
    )


Peer = model.IngressRule | model.EgressRule


def _direction(
    policy: Policy,
    path: str,
    name: str,
    *,
    allows: tuple[Peer, ...] | None,
    denies: tuple[Peer, ...] | None,
    default_deny: bool | None,
    ports: tuple[tuple[str, int], ...],
) -> DirectionContribution:
    enabled = bool(allows) or bool(denies)
    if not enabled:
        return NOTHING
    ingress = name == "ingress"
    deny_name = f"{name}Deny"
    return DirectionContribution(
        enabled,
        default_deny is not False,
        tuple(
            e
            for i, r in enumerate(allows or ())
            for e in _entries(policy, f"{path}.{name}[{i}]", r, ingress, ports)
        ),
        tuple(
            e
            for i, r in enumerate(denies or ())
            for e in _entries(policy, f"{path}.{deny_name}[{i}]", r, ingress, ports)
        ),
    )


def peers(rule: Peer, namespace: str | None) -> tuple[Selector, ...]:
    """The peer selectors of one ingress/egress rule (empty: the rule selects no peer).

    ``fromNodes``/``toNodes`` select remote nodes by their labels (:func:`node_selector`);
    ``toServices`` entries stay :class:`ServiceSelector` s until the resolver expands them against the
    Services of the endpoints file.
    """
    services: tuple[model.Service, ...] | None = None
    if isinstance(rule, model.IngressRule):
        endpoints, entities, cidrs, cidr_sets, fqdns, nodes = (
            rule.from_endpoints,
            rule.from_entities,
            rule.from_cidr,
            rule.from_cidr_set,
            None,
            rule.from_nodes,
        )
    else:
        endpoints, entities, cidrs, cidr_sets, fqdns, nodes = (
            rule.to_endpoints,
            rule.to_entities,
            rule.to_cidr,
            rule.to_cidr_set,
            rule.to_fqdns,
            rule.to_nodes,
        )
        services = rule.to_services
    if all(f is None for f in (endpoints, entities, cidrs, cidr_sets, fqdns, nodes, services)):
        # No L3 field: an L4-only rule allows every peer; a rule with nothing at all allows nothing.
        return (WILDCARD,) if (rule.to_ports or rule.icmps) else ()
    out: list[Selector] = []
    out += [peer_selector(s, namespace) for s in endpoints or ()]
    out += [EntitySelector(e) for e in entities or ()]
    out += [cidr_selector(c) for c in cidrs or ()]
    out += [cidr_selector(c.cidr, c.except_ or ()) for c in cidr_sets or ()]
    out += [fqdn_selector(f) for f in fqdns or ()]
    out += [node_selector(n) for n in nodes or ()]
    out += [service_selector(s) for s in services or ()]
    return tuple(out)


def _l7(port_rule: model.PortRule) -> L7RuleSet | None:
    rules = port_rule.rules
    if port_rule.server_names or port_rule.terminating_tls or port_rule.originating_tls:
        return L7RuleSet(
            "http",
            http=rules.http or () if rules is not None else (),
            server_names=port_rule.server_names or (),
            terminating=port_rule.terminating_tls,
            originating=port_rule.originating_tls,
        )
    if rules is None:
        return None
    if rules.http:
        return L7RuleSet("http", http=rules.http)
    if rules.dns:
        return L7RuleSet("dns", dns=rules.dns)
    return None


def _l4(
    rule: Peer, path: str, ingress: bool, ports: tuple[tuple[str, int], ...]
) -> Iterator[tuple[str, int, int, str | None, L7RuleSet | None, str]]:
    """(protocol, lo, hi, named port, L7, field path) of each L4 match of a rule."""
    if not rule.to_ports and not rule.icmps:
        yield ANY_PROTOCOL, 0, 65535, None, None, path
        return
    for j, port_rule in enumerate(rule.to_ports or ()):
        where = f"{path}.toPorts[{j}]"
        l7 = _l7(port_rule)
        for pp in port_rule.ports or (model.PortProtocol(),):
            protocols = L4_PROTOCOLS if pp.protocol is model.Protocol.ANY else (str(pp.protocol),)
            lo, hi, named = 0, 65535, None
            if pp.port not in (None, ""):
                assert pp.port is not None
                parsed = parse_port(pp.port)
                if isinstance(parsed, str):
                    if ingress:
                        number = dict(ports).get(parsed)
                        if number is None:
                            continue  # an unresolvable named port matches nothing
                        lo = hi = number
                    else:
                        named = parsed
                elif parsed != 0:
                    lo, hi = parsed, max(parsed, pp.end_port or parsed)
            for protocol in protocols:
                yield protocol, lo, hi, named, l7, where
    for j, icmp in enumerate(rule.icmps or ()):
        for f in icmp.fields:
            number = icmp_type(f.family, f.type)
            yield ICMP_PROTOCOLS[f.family], number, number, None, None, f"{path}.icmps[{j}]"


def _entries(
    policy: Policy, path: str, rule: Peer, ingress: bool, ports: tuple[tuple[str, int], ...]
) -> tuple[SelectorEntry, ...]:
    selectors = peers(rule, policy.namespace)
    if not selectors:
        return ()
    out: list[SelectorEntry] = []
    for protocol, lo, hi, named, l7, where in _l4(rule, path, ingress, ports):
        origin = Origin(policy.key, where)
        out += [SelectorEntry(sel, protocol, lo, hi, origin, l7, named) for sel in selectors]
    return tuple(out)
