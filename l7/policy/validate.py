"""Semantic validation of parsed rules: what the schema cannot say, with a field path for each problem.

The checks follow Cilium's ``Rule.Sanitize`` (``pkg/policy/api/rule_validation.go``) plus what l7gate
needs to enforce a rule (L7 rules on one specific TCP port, RE2 regexes). Every check reports and
carries on: a rule yields all its problems at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from l7.policy import fqdn, labels, servernames
from l7.policy.cidr import parse_cidr
from l7.policy.entities import ENTITIES
from l7.policy.fieldpath import field, index, key
from l7.policy.headers import is_header_name, validate_header
from l7.policy.icmp import FAMILIES, icmp_type
from l7.policy.model import (
    CIDRRule,
    DNSRule,
    EgressRule,
    EndpointSelector,
    FQDNSelector,
    HTTPRule,
    ICMPRule,
    IngressRule,
    Operator,
    PortRule,
    Protocol,
    Rule,
    Service,
)
from l7.policy.ports import MAX_PORT, parse_port
from l7.policy.regex import envoy_host_regex, re2_error


@dataclass(frozen=True)
class Problem:
    """One semantic error: ``path`` is the full field path (``spec.egress[0].toFQDNs``)."""

    path: str
    message: str


Problems = list[Problem]

# L3 peer selectors of one rule: Cilium refuses to combine two kinds in one rule ("combining X and Y
# is not supported yet"), in allow and deny rules alike. Every one of them may be combined with toPorts:
# toServices too, as in the Cilium of the reference CRDs (older releases refused toServices + toPorts).
_INGRESS_L3 = (
    ("fromEndpoints", "from_endpoints"),
    ("fromCIDR", "from_cidr"),
    ("fromCIDRSet", "from_cidr_set"),
    ("fromEntities", "from_entities"),
    ("fromNodes", "from_nodes"),
)
_EGRESS_L3 = (
    ("toEndpoints", "to_endpoints"),
    ("toCIDR", "to_cidr"),
    ("toCIDRSet", "to_cidr_set"),
    ("toEntities", "to_entities"),
    ("toFQDNs", "to_fqdns"),
    ("toServices", "to_services"),
    ("toNodes", "to_nodes"),
)


def validate_rule(rule: Rule, path: str, *, namespaced: bool) -> Problems:
    """Every problem of one ``spec`` / ``specs[i]`` entry located at ``path``."""
    problems: Problems = []
    has_endpoints = rule.endpoint_selector is not None
    has_nodes = rule.node_selector is not None
    if not has_endpoints and not has_nodes:
        problems.append(Problem(path, "a rule needs an endpointSelector or a nodeSelector"))
    if has_endpoints and has_nodes:
        problems.append(
            Problem(
                field(path, "nodeSelector"), "a rule cannot have both an endpointSelector and a nodeSelector"
            )
        )
    if rule.endpoint_selector is not None:
        problems += validate_selector(rule.endpoint_selector, field(path, "endpointSelector"))
    if rule.node_selector is not None:
        if namespaced:
            problems.append(
                Problem(field(path, "nodeSelector"), "nodeSelector is only allowed in cluster-wide policies")
            )
        problems += validate_selector(rule.node_selector, field(path, "nodeSelector"))
    for name, items, deny in (("ingress", rule.ingress, False), ("ingressDeny", rule.ingress_deny, True)):
        for i, ingress in enumerate(items or ()):
            problems += validate_ingress(ingress, index(field(path, name), i), deny=deny, host=has_nodes)
    for name, egress_items, deny in (("egress", rule.egress, False), ("egressDeny", rule.egress_deny, True)):
        for i, egress in enumerate(egress_items or ()):
            problems += validate_egress(egress, index(field(path, name), i), deny=deny, host=has_nodes)
    return problems


def validate_ingress(rule: IngressRule, path: str, *, deny: bool, host: bool = False) -> Problems:
    """One entry of ``ingress`` / ``ingressDeny``."""
    problems = _exclusive_l3(rule, path, _INGRESS_L3)
    for i, selector in enumerate(rule.from_endpoints or ()):
        problems += validate_selector(selector, index(field(path, "fromEndpoints"), i))
    for i, selector in enumerate(rule.from_nodes or ()):
        problems += validate_selector(selector, index(field(path, "fromNodes"), i))
    problems += _entities(rule.from_entities, field(path, "fromEntities"))
    problems += _cidrs(rule.from_cidr, field(path, "fromCIDR"))
    problems += _cidr_set(rule.from_cidr_set, field(path, "fromCIDRSet"))
    problems += _ports_and_icmps(rule.to_ports, rule.icmps, path, ingress=True, deny=deny, host=host)
    return problems


def validate_egress(rule: EgressRule, path: str, *, deny: bool, host: bool = False) -> Problems:
    """One entry of ``egress`` / ``egressDeny``."""
    problems = _exclusive_l3(rule, path, _EGRESS_L3)
    for i, selector in enumerate(rule.to_endpoints or ()):
        problems += validate_selector(selector, index(field(path, "toEndpoints"), i))
    for i, selector in enumerate(rule.to_nodes or ()):
        problems += validate_selector(selector, index(field(path, "toNodes"), i))
    for i, service in enumerate(rule.to_services or ()):
        problems += _service(service, index(field(path, "toServices"), i))
    problems += _entities(rule.to_entities, field(path, "toEntities"))
    problems += _cidrs(rule.to_cidr, field(path, "toCIDR"))
    problems += _cidr_set(rule.to_cidr_set, field(path, "toCIDRSet"))
    if rule.to_fqdns is not None and deny:
        problems.append(Problem(field(path, "toFQDNs"), "toFQDNs is not allowed in egressDeny"))
    for i, name_selector in enumerate(rule.to_fqdns or ()):
        problems += _name_selector(name_selector, index(field(path, "toFQDNs"), i))
    problems += _ports_and_icmps(rule.to_ports, rule.icmps, path, ingress=False, deny=deny, host=host)
    return problems


def _exclusive_l3(rule: IngressRule | EgressRule, path: str, members: Sequence[tuple[str, str]]) -> Problems:
    present = [alias for alias, attr in members if getattr(rule, attr)]
    if len(present) < 2:
        return []
    return [
        Problem(
            field(path, present[1]),
            f"{present[0]} and {present[1]} cannot be combined in one rule: write two rules",
        )
    ]


def validate_selector(selector: EndpointSelector, path: str) -> Problems:
    """A label selector: valid keys and values, operators with the right number of values."""
    problems: Problems = []
    for label_key, value in (selector.match_labels or {}).items():
        where = key(field(path, "matchLabels"), label_key)
        problem = labels.validate_key(label_key) or labels.validate_value(value)
        if problem:
            problems.append(Problem(where, problem))
    for i, requirement in enumerate(selector.match_expressions or ()):
        where = index(field(path, "matchExpressions"), i)
        problem = labels.validate_key(requirement.key)
        if problem:
            problems.append(Problem(field(where, "key"), problem))
        values = requirement.values or ()
        if requirement.operator in (Operator.IN, Operator.NOT_IN) and not values:
            problems.append(
                Problem(field(where, "values"), f"operator {requirement.operator} needs at least one value")
            )
        if requirement.operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            problems.append(
                Problem(field(where, "values"), f"operator {requirement.operator} takes no values")
            )
        for j, value in enumerate(values):
            problem = labels.validate_value(value)
            if problem:
                problems.append(Problem(index(field(where, "values"), j), problem))
    return problems


def _service(service: Service, path: str) -> Problems:
    """One ``toServices`` entry: a Service by name or Services by label selector, namespace optional.

    Setting both is a problem of its own; each part that is set is still checked, so every problem of
    the entry is reported at once.
    """
    by_name, by_labels = service.k8s_service, service.k8s_service_selector
    if by_name is None and by_labels is None:
        return [Problem(path, "one of k8sService and k8sServiceSelector is required")]
    problems: Problems = []
    if by_name is not None and by_labels is not None:
        problems.append(
            Problem(
                field(path, "k8sServiceSelector"), "only one of k8sService and k8sServiceSelector may be set"
            )
        )
    if by_name is not None:
        where = field(path, "k8sService")
        if not labels.is_dns_1035_label(by_name.service_name):
            problems.append(
                Problem(
                    field(where, "serviceName"),
                    f"{by_name.service_name!r} is not a valid Service name "
                    "(lower-case RFC 1035 label: a letter first, ≤63 characters)",
                )
            )
        problems += _service_namespace(by_name.namespace, where)
    if by_labels is not None:
        where = field(path, "k8sServiceSelector")
        problems += validate_selector(by_labels.selector, field(where, "selector"))
        problems += _service_namespace(by_labels.namespace, where)
    return problems


def _service_namespace(namespace: str | None, path: str) -> Problems:
    if namespace is None or labels.is_dns_label(namespace):
        return []
    return [
        Problem(
            field(path, "namespace"),
            f"{namespace!r} is not a valid namespace (lower-case RFC 1123 label, ≤63 characters)",
        )
    ]


def _entities(entities: Sequence[str] | None, path: str) -> Problems:
    return [
        Problem(index(path, i), f"unknown entity {entity!r} (one of {', '.join(sorted(ENTITIES))})")
        for i, entity in enumerate(entities or ())
        if entity not in ENTITIES
    ]


def _cidrs(cidrs: Sequence[str] | None, path: str) -> Problems:
    problems: Problems = []
    for i, text in enumerate(cidrs or ()):
        try:
            parse_cidr(text, bare_ip=True)
        except ValueError as exc:
            problems.append(Problem(index(path, i), str(exc)))
    return problems


def _cidr_set(rules: Sequence[CIDRRule] | None, path: str) -> Problems:
    problems: Problems = []
    for i, rule in enumerate(rules or ()):
        where = index(path, i)
        try:
            network = parse_cidr(rule.cidr, bare_ip=False)
        except ValueError as exc:
            problems.append(Problem(field(where, "cidr"), str(exc)))
            network = None
        for j, text in enumerate(rule.except_ or ()):
            except_path = index(field(where, "except"), j)
            try:
                excluded = parse_cidr(text, bare_ip=False)
            except ValueError as exc:
                problems.append(Problem(except_path, str(exc)))
                continue
            if network is None:
                continue
            if excluded.version != network.version:
                problems.append(Problem(except_path, f"{text} is not of the same IP family as {rule.cidr}"))
            elif not excluded.subnet_of(network):  # type: ignore[arg-type]
                problems.append(Problem(except_path, f"{text} is not inside {rule.cidr}"))
    return problems


def _ports_and_icmps(
    port_rules: Sequence[PortRule] | None,
    icmps: Sequence[ICMPRule] | None,
    path: str,
    *,
    ingress: bool,
    deny: bool,
    host: bool,
) -> Problems:
    problems: Problems = []
    if port_rules and icmps:
        problems.append(
            Problem(
                field(path, "icmps"), "icmps cannot be combined with toPorts in one rule: write two rules"
            )
        )
    for i, port_rule in enumerate(port_rules or ()):
        problems += _port_rule(
            port_rule, index(field(path, "toPorts"), i), ingress=ingress, deny=deny, host=host
        )
    for i, icmp in enumerate(icmps or ()):
        for j, icmp_field in enumerate(icmp.fields):
            where = index(field(index(field(path, "icmps"), i), "fields"), j)
            if icmp_field.family not in FAMILIES:
                problems.append(
                    Problem(
                        field(where, "family"), f"unknown ICMP family {icmp_field.family!r} (IPv4 or IPv6)"
                    )
                )
                continue
            try:
                icmp_type(icmp_field.family, icmp_field.type)
            except ValueError as exc:
                problems.append(Problem(field(where, "type"), str(exc)))
    return problems


def _port_rule(rule: PortRule, path: str, *, ingress: bool, deny: bool, host: bool) -> Problems:
    problems: Problems = []
    l7_ports_ok = True
    for i, port in enumerate(rule.ports or ()):
        where = index(field(path, "ports"), i)
        if port.port is None:
            problems.append(Problem(field(where, "port"), 'port is required ("0" means every port)'))
            l7_ports_ok = False
            continue
        try:
            number = parse_port(port.port)
        except ValueError as exc:
            problems.append(Problem(field(where, "port"), str(exc)))
            l7_ports_ok = False
            continue
        if port.end_port is not None:
            if isinstance(number, str):
                problems.append(Problem(field(where, "endPort"), "endPort needs a numeric port"))
            elif number == 0:
                problems.append(Problem(field(where, "endPort"), 'endPort is not allowed with port "0"'))
            elif not number <= port.end_port <= MAX_PORT:
                problems.append(
                    Problem(
                        field(where, "endPort"), f"endPort must be between port ({number}) and {MAX_PORT}"
                    )
                )
        if isinstance(number, str) or number == 0 or (port.end_port is not None and port.end_port != number):
            l7_ports_ok = False
    problems += _tls(rule, path, deny=deny, host=host, l7_ports_ok=l7_ports_ok)
    rules = rule.rules
    if rules is None or (not rules.http and not rules.dns):
        return problems
    rules_path = field(path, "rules")
    if deny:
        return [*problems, Problem(rules_path, "L7 rules are not allowed in deny rules")]
    if rules.http and rules.dns:
        problems.append(Problem(rules_path, "only one kind of L7 rules (http or dns) per port rule"))
    if host:
        problems.append(Problem(rules_path, "L7 rules are not supported in node (host) policies"))
    if ingress and rules.dns:
        problems.append(Problem(field(rules_path, "dns"), "DNS rules are only allowed in egress rules"))
    if not rule.ports:
        problems.append(Problem(field(path, "ports"), "L7 rules need at least one port"))
    elif not l7_ports_ok:
        problems.append(
            Problem(
                field(path, "ports"),
                'L7 rules need specific numeric ports (not "0", not a name, not a range)',
            )
        )
    allowed = {Protocol.TCP} if rules.http else {Protocol.TCP, Protocol.UDP, Protocol.ANY}
    for i, port in enumerate(rule.ports or ()):
        if port.protocol not in allowed:
            problems.append(
                Problem(
                    field(index(field(path, "ports"), i), "protocol"),
                    f"{'HTTP' if rules.http else 'DNS'} rules need protocol "
                    f"{' or '.join(sorted(allowed))}, not {port.protocol}",
                )
            )
    for i, http in enumerate(rules.http or ()):
        problems += _http_rule(http, index(field(rules_path, "http"), i))
    for i, dns in enumerate(rules.dns or ()):
        problems += _name_selector(dns, index(field(rules_path, "dns"), i))
    return problems


def _tls(rule: PortRule, path: str, *, deny: bool, host: bool, l7_ports_ok: bool) -> Problems:
    """serverNames, terminatingTLS and originatingTLS: TLS on specific TCP ports of allow rules."""
    present = [
        (name, value)
        for name, value in (
            ("serverNames", rule.server_names),
            ("terminatingTLS", rule.terminating_tls),
            ("originatingTLS", rule.originating_tls),
        )
        if value is not None
    ]
    if not present:
        return []
    first = field(path, present[0][0])
    if deny:
        return [
            Problem(
                first, "TLS rules (serverNames, terminatingTLS, originatingTLS) are not allowed in deny rules"
            )
        ]
    problems: Problems = []
    if host:
        problems.append(Problem(first, "TLS rules are not supported in node (host) policies"))
    for i, name in enumerate(rule.server_names or ()):
        problem = servernames.validate(name)
        if problem:
            problems.append(Problem(index(field(path, "serverNames"), i), problem))
    if rule.server_names is not None and not rule.server_names:
        problems.append(Problem(field(path, "serverNames"), "must list at least one name"))
    if not rule.ports:
        problems.append(Problem(field(path, "ports"), "TLS rules need at least one port"))
    elif not l7_ports_ok:
        problems.append(
            Problem(
                field(path, "ports"),
                'TLS rules need specific numeric ports (not "0", not a name, not a range)',
            )
        )
    for i, port in enumerate(() if rule.rules is not None and rule.rules.http else rule.ports or ()):
        if port.protocol is not Protocol.TCP:
            problems.append(
                Problem(
                    field(index(field(path, "ports"), i), "protocol"),
                    f"TLS rules need protocol TCP, not {port.protocol}",
                )
            )
    rules = rule.rules
    if rules is not None and rules.dns:
        problems.append(
            Problem(field(field(path, "rules"), "dns"), "DNS rules cannot be combined with TLS rules")
        )
    if rules is not None and rules.http and rule.terminating_tls is None:
        problems.append(
            Problem(
                field(path, "terminatingTLS"),
                "HTTP rules on a TLS port need terminatingTLS (the proxy cannot read the requests otherwise)",
            )
        )
    for name, context in (("terminatingTLS", rule.terminating_tls), ("originatingTLS", rule.originating_tls)):
        if context is not None and not context.secret.name:
            problems.append(Problem(field(field(field(path, name), "secret"), "name"), "must not be empty"))
    return problems


def _http_rule(rule: HTTPRule, path: str) -> Problems:
    problems: Problems = []
    for name, value in (("method", rule.method), ("path", rule.path), ("host", rule.host)):
        if value is not None:
            problem = re2_error(value, envoy_host_regex(value) if name == "host" else None)
            if problem:
                problems.append(Problem(field(path, name), problem))
    for i, header in enumerate(rule.headers or ()):
        problem = validate_header(header)
        if problem:
            problems.append(Problem(index(field(path, "headers"), i), problem))
    for i, match in enumerate(rule.header_matches or ()):
        where = index(field(path, "headerMatches"), i)
        if not is_header_name(match.name):
            problems.append(Problem(field(where, "name"), f"{match.name!r} is not a valid HTTP header name"))
        if match.value is not None and match.secret is not None:
            problems.append(Problem(field(where, "secret"), "only one of value and secret may be set"))
    return problems


def _name_selector(selector: FQDNSelector | DNSRule, path: str) -> Problems:
    if selector.match_name is not None and selector.match_pattern is not None:
        return [Problem(field(path, "matchPattern"), "only one of matchName and matchPattern may be set")]
    if selector.match_name is not None:
        problem = fqdn.validate_name(selector.match_name)
        return [Problem(field(path, "matchName"), problem)] if problem else []
    if selector.match_pattern is not None:
        problem = fqdn.validate_pattern(selector.match_pattern)
        return [Problem(field(path, "matchPattern"), problem)] if problem else []
    return [Problem(path, "one of matchName and matchPattern is required")]
