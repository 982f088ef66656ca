"""Each validation rule: a document that breaks it, the exact field path, and a telling message."""

from __future__ import annotations

import pytest
from policy_helpers import spec_errors

CCNP = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: p\n"

EP = "endpointSelector: {}\n"

CASES: list[tuple[str, str, str, str]] = [
    # (id, spec body, expected path, message fragment)
    ("no-selector", "egress: []", "spec", "endpointSelector or a nodeSelector"),
    (
        "unsupported-field",
        EP + "egress:\n- toRequires: []",
        "spec.egress[0].toRequires",
        "unsupported by l7gate",
    ),
    (
        "unsupported-field-ingress",
        EP + "ingress:\n- fromRequires: [{}]",
        "spec.ingress[0].fromRequires",
        "unsupported by l7gate",
    ),
    ("unknown-field", EP + "egress:\n- toPlanet: []", "spec.egress[0].toPlanet", "unsupported field"),
    (
        "kafka",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '9092', protocol: TCP}]\n    rules: {kafka: []}",
        "spec.egress[0].toPorts[0].rules.kafka",
        "unsupported by l7gate",
    ),
    ("spec-labels", EP + "labels: []", "spec.labels", "unsupported by l7gate"),
    ("cnp-node-selector", "nodeSelector: {}", "spec.nodeSelector", "only allowed in cluster-wide"),
    (
        "regex-path",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{}, {path: '/(a'}]}",
        "spec.ingress[0].toPorts[0].rules.http[1].path",
        "invalid RE2 regex: missing ): /(a",
    ),
    (
        "regex-lookahead",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{method: '(?=GET)GET'}]}",
        "spec.ingress[0].toPorts[0].rules.http[0].method",
        "invalid RE2 regex",
    ),
    (
        "regex-backref",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{host: '(a)\\1'}]}",
        "spec.ingress[0].toPorts[0].rules.http[0].host",
        "invalid RE2 regex",
    ),
    (
        "port-range",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '65536'}]",
        "spec.egress[0].toPorts[0].ports[0].port",
        "out of range",
    ),
    (
        "port-name",
        EP + "egress:\n- toPorts:\n  - ports: [{port: 'my--port'}]",
        "spec.egress[0].toPorts[0].ports[0].port",
        "service name",
    ),
    (
        "port-leading-zero",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '080'}]",
        "spec.egress[0].toPorts[0].ports[0].port",
        "leading zeros",
    ),
    (
        "port-missing",
        EP + "egress:\n- toPorts:\n  - ports: [{protocol: TCP}]",
        "spec.egress[0].toPorts[0].ports[0].port",
        "required",
    ),
    (
        "endport-below",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '90', endPort: 80}]",
        "spec.egress[0].toPorts[0].ports[0].endPort",
        "between port",
    ),
    (
        "endport-zero",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '0', endPort: 80}]",
        "spec.egress[0].toPorts[0].ports[0].endPort",
        'not allowed with port "0"',
    ),
    (
        "endport-named",
        EP + "egress:\n- toPorts:\n  - ports: [{port: 'http', endPort: 80}]",
        "spec.egress[0].toPorts[0].ports[0].endPort",
        "numeric port",
    ),
    (
        "protocol",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '80', protocol: ICMP}]",
        "spec.egress[0].toPorts[0].ports[0].protocol",
        "'TCP'",
    ),
    (
        "l7-port-zero",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '0', protocol: TCP}]\n    rules: {http: [{}]}",
        "spec.ingress[0].toPorts[0].ports",
        "specific numeric ports",
    ),
    (
        "l7-port-range",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', endPort: 90, protocol: TCP}]\n"
        "    rules: {http: [{}]}",
        "spec.ingress[0].toPorts[0].ports",
        "specific numeric ports",
    ),
    (
        "l7-no-ports",
        EP + "ingress:\n- toPorts:\n  - rules: {http: [{}]}",
        "spec.ingress[0].toPorts[0].ports",
        "at least one port",
    ),
    (
        "http-udp",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: UDP}]\n    rules: {http: [{}]}",
        "spec.ingress[0].toPorts[0].ports[0].protocol",
        "HTTP rules need protocol TCP",
    ),
    (
        "dns-sctp",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '53', protocol: SCTP}]\n"
        "    rules: {dns: [{matchPattern: '*'}]}",
        "spec.egress[0].toPorts[0].ports[0].protocol",
        "DNS rules",
    ),
    (
        "http-and-dns",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '53', protocol: TCP}]\n"
        "    rules: {http: [{}], dns: [{matchPattern: '*'}]}",
        "spec.egress[0].toPorts[0].rules",
        "only one kind",
    ),
    (
        "dns-ingress",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '53', protocol: UDP}]\n"
        "    rules: {dns: [{matchPattern: '*'}]}",
        "spec.ingress[0].toPorts[0].rules.dns",
        "only allowed in egress",
    ),
    (
        "l7-in-deny",
        EP + "egressDeny:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{}]}",
        "spec.egressDeny[0].toPorts[0].rules",
        "not allowed in deny rules",
    ),
    (
        "fqdn-in-deny",
        EP + "egressDeny:\n- toFQDNs: [{matchName: a.com}]",
        "spec.egressDeny[0].toFQDNs",
        "not allowed in egressDeny",
    ),
    ("cidr", EP + "egress:\n- toCIDR: [10.0.0.0/33]", "spec.egress[0].toCIDR[0]", "prefix length"),
    ("cidr-garbage", EP + "egress:\n- toCIDR: [10.0.0/8]", "spec.egress[0].toCIDR[0]", "not an IP address"),
    (
        "cidrset-bare-ip",
        EP + "egress:\n- toCIDRSet: [{cidr: 10.0.0.1}]",
        "spec.egress[0].toCIDRSet[0].cidr",
        "prefix length (/n) is required",
    ),
    (
        "except-outside",
        EP + "egress:\n- toCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]",
        "spec.egress[0].toCIDRSet[0].except[0]",
        "not inside 10.0.0.0/8",
    ),
    (
        "except-wider",
        EP + "egress:\n- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.0.0.0/4]}]",
        "spec.egress[0].toCIDRSet[0].except[0]",
        "not inside",
    ),
    (
        "except-family",
        EP + "ingress:\n- fromCIDRSet: [{cidr: 10.0.0.0/8, except: ['fd00::/8']}]",
        "spec.ingress[0].fromCIDRSet[0].except[0]",
        "same IP family",
    ),
    (
        "entity",
        EP + "egress:\n- toEntities: [host, everything]",
        "spec.egress[0].toEntities[1]",
        "unknown entity 'everything'",
    ),
    (
        "in-no-values",
        EP + "ingress:\n- fromEndpoints:\n  - matchExpressions: [{key: app, operator: In}]",
        "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values",
        "at least one value",
    ),
    (
        "exists-values",
        "endpointSelector:\n  matchExpressions: [{key: app, operator: Exists, values: [a]}]",
        "spec.endpointSelector.matchExpressions[0].values",
        "takes no values",
    ),
    (
        "operator",
        "endpointSelector:\n  matchExpressions: [{key: app, operator: Maybe}]",
        "spec.endpointSelector.matchExpressions[0].operator",
        "'In'",
    ),
    (
        "label-source",
        "endpointSelector:\n  matchLabels: {'cidr:app': x}",
        "spec.endpointSelector.matchLabels[cidr:app]",
        "unknown source 'cidr'",
    ),
    (
        "label-key",
        "endpointSelector:\n  matchLabels: {'-app': x}",
        "spec.endpointSelector.matchLabels[-app]",
        "label key",
    ),
    (
        "label-value",
        "endpointSelector:\n  matchLabels: {app: 'a b'}",
        "spec.endpointSelector.matchLabels[app]",
        "label value",
    ),
    (
        "label-value-int",
        "endpointSelector:\n  matchLabels: {app: 1}",
        "spec.endpointSelector.matchLabels[app]",
        "must be a string",
    ),
    (
        "expr-value",
        "endpointSelector:\n  matchExpressions: [{key: app, operator: In, values: [ok, 'no!']}]",
        "spec.endpointSelector.matchExpressions[0].values[1]",
        "label value",
    ),
    (
        "fqdn-both",
        EP + "egress:\n- toFQDNs: [{matchName: a.com, matchPattern: '*.a.com'}]",
        "spec.egress[0].toFQDNs[0].matchPattern",
        "only one of",
    ),
    ("fqdn-none", EP + "egress:\n- toFQDNs: [{}]", "spec.egress[0].toFQDNs[0]", "one of matchName"),
    (
        "fqdn-name-chars",
        EP + "egress:\n- toFQDNs: [{matchName: 'a*.com'}]",
        "spec.egress[0].toFQDNs[0].matchName",
        "may only contain",
    ),
    (
        "fqdn-label-long",
        EP + "egress:\n- toFQDNs: [{matchName: '" + "a" * 64 + ".com'}]",
        "spec.egress[0].toFQDNs[0].matchName",
        "longer than 63",
    ),
    (
        "fqdn-pattern-chars",
        EP + "egress:\n- toFQDNs: [{matchPattern: 'a.[x].com'}]",
        "spec.egress[0].toFQDNs[0].matchPattern",
        "may only contain",
    ),
    (
        "dns-pattern",
        EP + "egress:\n- toPorts:\n  - ports: [{port: '53', protocol: ANY}]\n"
        "    rules: {dns: [{matchPattern: 'a..b'}]}",
        "spec.egress[0].toPorts[0].rules.dns[0].matchPattern",
        "empty label",
    ),
    (
        "dns-no-port",
        EP + "egress:\n- toPorts:\n  - rules: {dns: [{matchPattern: '*'}]}",
        "spec.egress[0].toPorts[0].ports",
        "at least one port",
    ),
    (
        "fqdn-with-endpoints",
        EP + "egress:\n- toEndpoints: [{}]\n  toFQDNs: [{matchName: a.com}]",
        "spec.egress[0].toFQDNs",
        "toEndpoints and toFQDNs cannot be combined",
    ),
    (
        "fqdn-with-cidr",
        EP + "egress:\n- toCIDR: [1.2.3.4/32]\n  toFQDNs: [{matchName: a.com}]",
        "spec.egress[0].toFQDNs",
        "cannot be combined",
    ),
    (
        "l3-mixed-ingress",
        EP + "ingress:\n- fromEntities: [world]\n  fromCIDR: [1.2.3.4/32]",
        "spec.ingress[0].fromEntities",
        "fromCIDR and fromEntities cannot be combined",
    ),
    (
        "l3-mixed-egress",
        EP + "egress:\n- toEndpoints: [{}]\n  toEntities: [world]",
        "spec.egress[0].toEntities",
        "cannot be combined",
    ),
    (
        "icmp-with-ports",
        EP + "egress:\n- toPorts: [{ports: [{port: '80'}]}]\n  icmps: [{fields: [{type: 8}]}]",
        "spec.egress[0].icmps",
        "icmps cannot be combined with toPorts",
    ),
    (
        "icmp-family",
        EP + "egress:\n- icmps: [{fields: [{type: 8, family: IPv5}]}]",
        "spec.egress[0].icmps[0].fields[0].family",
        "unknown ICMP family",
    ),
    (
        "icmp-type-range",
        EP + "egress:\n- icmps: [{fields: [{type: 256}]}]",
        "spec.egress[0].icmps[0].fields[0].type",
        "out of range",
    ),
    (
        "icmp-type-name",
        EP + "egress:\n- icmps: [{fields: [{type: PacketTooBig, family: IPv4}]}]",
        "spec.egress[0].icmps[0].fields[0].type",
        "unknown IPv4 ICMP type 'PacketTooBig'",
    ),
    ("icmp-fields-missing", EP + "egress:\n- icmps: [{}]", "spec.egress[0].icmps[0].fields", "required"),
    (
        "header",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{headers: ['X-Key:v']}]}",
        "spec.ingress[0].toPorts[0].rules.http[0].headers[0]",
        "not a valid HTTP header name",
    ),
    (
        "header-match-name",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{headerMatches: [{value: x}]}]}",
        "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name",
        "required",
    ),
    (
        "header-match-bad-name",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{headerMatches: [{name: 'a b'}]}]}",
        "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name",
        "not a valid HTTP header name",
    ),
    (
        "header-match-value-secret",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{headerMatches: [{name: X, value: v, secret: {name: s}}]}]}",
        "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret",
        "only one of value and secret",
    ),
    (
        "header-match-mismatch",
        EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{headerMatches: [{name: X, mismatch: DROP}]}]}",
        "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch",
        "'LOG'",
    ),
    # toServices, toNodes, fromNodes
    (
        "service-none",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: a}}, {}]",
        "spec.egress[0].toServices[1]",
        "one of k8sService and k8sServiceSelector is required",
    ),
    (
        "service-both",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: a}, k8sServiceSelector: {selector: {}}}]",
        "spec.egress[0].toServices[0].k8sServiceSelector",
        "only one of k8sService and k8sServiceSelector may be set",
    ),
    (
        "service-name-missing",
        EP + "egress:\n- toServices: [{k8sService: {namespace: default}}]",
        "spec.egress[0].toServices[0].k8sService.serviceName",
        "required field missing",
    ),
    (
        "service-name-digit",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: 1svc}}]",
        "spec.egress[0].toServices[0].k8sService.serviceName",
        "'1svc' is not a valid Service name (lower-case RFC 1035 label",
    ),
    (
        "service-name-upper",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: MySvc, namespace: default}}]",
        "spec.egress[0].toServices[0].k8sService.serviceName",
        "not a valid Service name",
    ),
    (
        "service-name-long",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: " + "a" * 64 + "}}]",
        "spec.egress[0].toServices[0].k8sService.serviceName",
        "≤63 characters",
    ),
    (
        "service-name-empty",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: ''}}]",
        "spec.egress[0].toServices[0].k8sService.serviceName",
        "not a valid Service name",
    ),
    (
        "service-namespace",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: a, namespace: Bad_NS}}]",
        "spec.egress[0].toServices[0].k8sService.namespace",
        "'Bad_NS' is not a valid namespace (lower-case RFC 1123 label",
    ),
    (
        "service-field",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: a, port: 80}}]",
        "spec.egress[0].toServices[0].k8sService.port",
        "unsupported field",
    ),
    (
        "service-selector-missing",
        EP + "egress:\n- toServices: [{k8sServiceSelector: {namespace: default}}]",
        "spec.egress[0].toServices[0].k8sServiceSelector.selector",
        "required field missing",
    ),
    (
        "service-selector-namespace",
        EP + "egress:\n- toServices: [{k8sServiceSelector: {selector: {}, namespace: '-ns'}}]",
        "spec.egress[0].toServices[0].k8sServiceSelector.namespace",
        "not a valid namespace",
    ),
    (
        "service-selector-label",
        EP + "egress:\n- toServices: [{k8sServiceSelector: {selector: {matchLabels: {env: 'a b'}}}}]",
        "spec.egress[0].toServices[0].k8sServiceSelector.selector.matchLabels[env]",
        "label value",
    ),
    (
        "service-selector-expression",
        EP + "egress:\n- toServices:\n  - k8sServiceSelector:\n"
        "      selector: {matchExpressions: [{key: env, operator: NotIn}]}",
        "spec.egress[0].toServices[0].k8sServiceSelector.selector.matchExpressions[0].values",
        "at least one value",
    ),
    (
        "service-with-endpoints",
        EP + "egress:\n- toEndpoints: [{}]\n  toServices: [{k8sService: {serviceName: a}}]",
        "spec.egress[0].toServices",
        "toEndpoints and toServices cannot be combined",
    ),
    (
        "service-with-fqdns",
        EP + "egress:\n- toFQDNs: [{matchName: a.com}]\n  toServices: [{k8sService: {serviceName: a}}]",
        "spec.egress[0].toServices",
        "toFQDNs and toServices cannot be combined",
    ),
    (
        "service-with-cidr-deny",
        EP + "egressDeny:\n- toCIDR: [10.0.0.0/8]\n  toServices: [{k8sService: {serviceName: a}}]",
        "spec.egressDeny[0].toServices",
        "toCIDR and toServices cannot be combined",
    ),
    (
        "to-nodes-with-entities",
        EP + "egress:\n- toEntities: [host]\n  toNodes: [{}]",
        "spec.egress[0].toNodes",
        "toEntities and toNodes cannot be combined",
    ),
    (
        "to-nodes-with-services",
        EP + "egress:\n- toServices: [{k8sService: {serviceName: a}}]\n  toNodes: [{}]",
        "spec.egress[0].toNodes",
        "toServices and toNodes cannot be combined",
    ),
    (
        "to-nodes-label",
        EP + "egress:\n- toNodes: [{}, {matchLabels: {zone: 'a b'}}]",
        "spec.egress[0].toNodes[1].matchLabels[zone]",
        "label value",
    ),
    (
        "to-nodes-operator",
        EP + "egressDeny:\n- toNodes: [{matchExpressions: [{key: zone, operator: Maybe}]}]",
        "spec.egressDeny[0].toNodes[0].matchExpressions[0].operator",
        "'In'",
    ),
    (
        "from-nodes-with-endpoints",
        EP + "ingress:\n- fromEndpoints: [{}]\n  fromNodes: [{}]",
        "spec.ingress[0].fromNodes",
        "fromEndpoints and fromNodes cannot be combined",
    ),
    (
        "from-nodes-with-cidr-deny",
        EP + "ingressDeny:\n- fromNodes: [{}]\n  fromCIDR: [10.0.0.0/8]",
        "spec.ingressDeny[0].fromNodes",
        "fromCIDR and fromNodes cannot be combined",
    ),
    (
        "from-nodes-key",
        EP + "ingress:\n- fromNodes: [{matchLabels: {'-role': ''}}]",
        "spec.ingress[0].fromNodes[0].matchLabels[-role]",
        "label key",
    ),
    (
        "from-nodes-exists-values",
        EP + "ingress:\n- fromNodes:\n  - {}\n"
        "  - matchExpressions: [{key: role, operator: Exists, values: [a]}]",
        "spec.ingress[0].fromNodes[1].matchExpressions[0].values",
        "takes no values",
    ),
    (
        "default-deny-type",
        EP + "enableDefaultDeny: {ingress: maybe}",
        "spec.enableDefaultDeny.ingress",
        "true or false",
    ),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_violation_is_reported_at_its_path(spec: str, path: str, fragment: str) -> None:
    errors = spec_errors(spec)
    assert any(p == path and fragment in m for p, m in errors), errors


def test_both_selectors() -> None:
    errors = spec_errors("endpointSelector: {}\nnodeSelector: {}", header=CCNP)
    assert errors == [("spec.nodeSelector", "a rule cannot have both an endpointSelector and a nodeSelector")]


def test_node_selector_ok_in_clusterwide_but_no_l7() -> None:
    assert spec_errors("nodeSelector: {}\ningress:\n- fromEntities: [world]", header=CCNP) == []
    errors = spec_errors(
        "nodeSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n"
        "    rules: {http: [{}]}",
        header=CCNP,
    )
    assert (
        "spec.ingress[0].toPorts[0].rules",
        "L7 rules are not supported in node (host) policies",
    ) in errors


VALID = [
    EP + "egress:\n- toPorts:\n  - ports: [{port: 80}]",  # YAML int port
    EP + "egress:\n- toPorts:\n  - ports: [{port: HTTP-Alt}]",  # named port, any case
    EP + "egress:\n- toPorts:\n  - ports: [{port: '0'}]",  # every port
    EP + "egress:\n- toPorts:\n  - ports: [{port: '8000', endPort: 8000}]",
    EP + "egress:\n- toCIDR: [1.2.3.4, '2001:db8::1', 10.1.2.3/8]",  # bare IPs, host bits set
    EP + "egress:\n- toEntities: [world-ipv4, world-ipv6, none, all, cluster]",
    EP + "egress:\n- toEntities: []",
    EP + "egress:\n- {}",
    EP + "egress:\n- icmps: [{fields: [{type: '8'}, {type: EchoRequest, family: IPv6}, {type: 0}]}]",
    EP + "egress:\n- toFQDNs: [{matchPattern: '*'}, {matchPattern: '**.a.com'}, {matchName: 'A_b.com.'}]",
    EP + "egress:\n- toPorts:\n  - ports: [{port: '5353', protocol: UDP}]\n"
    "    rules: {dns: [{matchName: a.com}]}",
    EP + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [], dns: []}",
    "endpointSelector:\n  matchLabels: {'reserved:host': '', 'any:a.b/c': v, 'container:x': y}",
    "endpointSelector:\n  matchLabels: {'unspec:z': ''}",
    EP + "description: d\nenableDefaultDeny: {ingress: false, egress: true}",
    # toServices: by name (namespace optional) or by label selector, with toPorts and L7 (Cilium ≥ 1.16)
    EP + "egress:\n- toServices: [{k8sService: {serviceName: my-svc}}, {k8sService: {serviceName: a, "
    "namespace: kube-system}}]",
    EP + "egress:\n- toServices:\n  - k8sServiceSelector:\n"
    "      selector: {matchLabels: {'app.kubernetes.io/name': db}, matchExpressions: [{key: tier, "
    "operator: In, values: [a, b]}]}\n"
    "  toPorts: [{ports: [{port: '5432', protocol: TCP}]}]",
    EP + "egress:\n- toServices: [{k8sService: {serviceName: kube-dns, namespace: kube-system}}]\n"
    "  toPorts:\n  - ports: [{port: '53', protocol: UDP}]\n    rules: {dns: [{matchPattern: '*'}]}",
    EP + "egress:\n- toServices: []\n  toEndpoints: [{}]",  # an empty list is no selector of that kind
    EP + "egressDeny:\n- toServices: [{k8sServiceSelector: {selector: {}, namespace: prod}}]",
    # toNodes / fromNodes, allow and deny, with ports
    EP + "egress:\n- toNodes: [{matchLabels: {'node-role.kubernetes.io/control-plane': ''}}]\n"
    "  toPorts: [{ports: [{port: '6443', protocol: TCP}]}]",
    EP + "egressDeny:\n- toNodes: [{}]",
    EP + "ingress:\n- fromNodes:\n"
    "  - matchExpressions: [{key: 'topology.kubernetes.io/zone', operator: Exists}]",
    EP + "ingressDeny:\n- fromNodes: [{}]\n  toPorts: [{ports: [{port: '22'}]}]",
]


@pytest.mark.parametrize("spec", VALID)
def test_cilium_accepts_so_do_we(spec: str) -> None:
    assert spec_errors(spec) == []


def test_service_and_node_selectors_report_every_problem_once() -> None:
    errors = spec_errors(
        EP + "egress:\n"
        "- toServices:\n"
        "  - k8sService: {serviceName: Web, namespace: 'ns!'}\n"
        "  - k8sServiceSelector: {selector: {matchLabels: {'-k': v}}, namespace: ok}\n"
        "  - {}\n"
        "ingress:\n"
        "- fromNodes: [{matchLabels: {role: 'x y'}}]\n"
        "  fromEntities: [cluster]\n"
    )
    assert [path for path, _ in errors] == [
        "spec.ingress[0].fromNodes",
        "spec.ingress[0].fromNodes[0].matchLabels[role]",
        "spec.egress[0].toServices[0].k8sService.serviceName",
        "spec.egress[0].toServices[0].k8sService.namespace",
        "spec.egress[0].toServices[1].k8sServiceSelector.selector.matchLabels[-k]",
        "spec.egress[0].toServices[2]",
    ]


def test_nodes_selectors_in_host_policies() -> None:
    spec = "nodeSelector: {}\ningress:\n- fromNodes: [{}]\negress:\n- toNodes: [{}]"
    assert spec_errors(spec, header=CCNP) == []


def test_service_with_both_forms_reports_every_problem() -> None:
    """Both k8sService and k8sServiceSelector set: that problem and those of each part, with paths."""
    errors = spec_errors(
        EP + "egress:\n"
        "- toServices:\n"
        "  - k8sService: {serviceName: 1svc, namespace: Bad_NS}\n"
        "    k8sServiceSelector: {selector: {matchLabels: {'-k': v}}, namespace: '-ns'}\n"
    )
    where = "spec.egress[0].toServices[0]"
    assert errors == [
        (f"{where}.k8sServiceSelector", "only one of k8sService and k8sServiceSelector may be set"),
        (
            f"{where}.k8sService.serviceName",
            "'1svc' is not a valid Service name (lower-case RFC 1035 label: a letter first, ≤63 characters)",
        ),
        (
            f"{where}.k8sService.namespace",
            "'Bad_NS' is not a valid namespace (lower-case RFC 1123 label, ≤63 characters)",
        ),
        (f"{where}.k8sServiceSelector.selector.matchLabels[-k]", errors[3][1]),
        (
            f"{where}.k8sServiceSelector.namespace",
            "'-ns' is not a valid namespace (lower-case RFC 1123 label, ≤63 characters)",
        ),
    ]
