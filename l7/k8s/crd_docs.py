"""What ``kubectl explain`` says about each field of a policy: plain text, written for cluster admins.

The model's docstrings are written for Python readers (reStructuredText markup, internal names); the CRD
takes its field descriptions from :data:`FIELD_DOCS` instead. A key is a field name (the same meaning
wherever it appears) or ``parent.field`` where the meaning depends on the enclosing field. :func:`plain`
strips markup from any other description (the objects themselves, the status). ``tests/kube`` checks that
every field of the generated schema has a description without markup and that no entry here is unused.
"""

from __future__ import annotations

import re

from l7.policy.entities import ENTITIES

_SELECTOR = (
    "Kubernetes label selector (matchLabels and matchExpressions, ANDed). Label keys may carry a source "
    "prefix: k8s:, any: or reserved:. An empty selector selects every endpoint."
)
_PORT_RULES = (
    "Restricts the rule to these ports and protocols, optionally with L7 rules (HTTP or DNS). "
    "Without toPorts every port is covered."
)
_ICMPS = "Restricts the rule to these ICMP message types (instead of ports)."
_ENTITIES = "Peers by entity: " + ", ".join(sorted(ENTITIES)) + "."
_CIDR_SET = "CIDR ranges, each with optional exceptions."
_TLS_ITEM = "Name of the item in the Secret that holds {what} (default: {default})."
_TLS = (
    "TLS {side} for this port: a Secret and the names of its items. {why} Only for TCP ports, never in "
    "deny rules."
)

FIELD_DOCS: dict[str, str] = {
    # the rule
    "description": "Free text describing the rule, for people; l7gate ignores it.",
    "endpointSelector": "Selects the endpoints (pods) this rule applies to. " + _SELECTOR,
    "nodeSelector": (
        "Selects the nodes (host endpoints) this rule applies to, instead of pods. Only in cluster-wide "
        "policies. " + _SELECTOR
    ),
    "ingress": (
        "Allow rules for traffic into the selected endpoints. Once any rule selects an endpoint for "
        "ingress, everything not allowed is denied (default deny)."
    ),
    "egress": (
        "Allow rules for traffic out of the selected endpoints. Once any rule selects an endpoint for "
        "egress, everything not allowed is denied (default deny)."
    ),
    "ingressDeny": "Deny rules for traffic into the selected endpoints. A deny always wins over an allow.",
    "egressDeny": "Deny rules for traffic out of the selected endpoints. A deny always wins over an allow.",
    "enableDefaultDeny": (
        "Whether this rule puts the selected endpoints into default deny for each direction (default: "
        "true). false adds allows without denying anything else."
    ),
    "enableDefaultDeny.ingress": "false: this rule's ingress allows do not enable ingress default deny.",
    "enableDefaultDeny.egress": "false: this rule's egress allows do not enable egress default deny.",
    # peers
    "fromEndpoints": "Peers (pods) allowed to connect, by labels. " + _SELECTOR,
    "toEndpoints": "Peers (pods) the endpoints may connect to, by labels. " + _SELECTOR,
    "fromNodes": "Nodes allowed to connect, by node labels. " + _SELECTOR,
    "toNodes": "Nodes the endpoints may connect to, by node labels. " + _SELECTOR,
    "fromEntities": _ENTITIES,
    "toEntities": _ENTITIES,
    "fromCIDR": "Peers by IPv4 or IPv6 address range (CIDR) or single address.",
    "toCIDR": "Peers by IPv4 or IPv6 address range (CIDR) or single address.",
    "fromCIDRSet": _CIDR_SET,
    "toCIDRSet": _CIDR_SET,
    "cidr": "An IPv4 or IPv6 address range, e.g. 10.0.0.0/8.",
    "except": "Ranges inside cidr that are not covered.",
    "toFQDNs": (
        "Destinations by DNS name: the addresses in DNS answers for matching names become allowed. "
        "Needs a DNS rule (toPorts.rules.dns) that lets the endpoint look the names up."
    ),
    "toFQDNs.matchName": "An exact DNS name (case-insensitive, trailing dot optional).",
    "toFQDNs.matchPattern": (
        "A DNS name pattern: * matches within one label, a leading **. matches one or more labels, "
        "* alone matches every name."
    ),
    "toServices": "Destinations by Kubernetes Service: its backends.",
    "k8sService": "A Service by name; without namespace the name in every namespace.",
    "k8sService.serviceName": "The Service's name.",
    "k8sService.namespace": "The Service's namespace (default: every namespace).",
    "k8sServiceSelector": "Services by their labels; without namespace in every namespace.",
    "k8sServiceSelector.selector": "Label selector on the Service objects. " + _SELECTOR,
    "k8sServiceSelector.namespace": "Only Services in this namespace (default: every namespace).",
    # label selectors
    "matchLabels": "Labels that must all be present with these values.",
    "matchExpressions": "Label requirements that must all hold.",
    "matchExpressions.key": "The label key.",
    "matchExpressions.operator": "In, NotIn, Exists or DoesNotExist.",
    "matchExpressions.values": "The values for In and NotIn (empty for Exists and DoesNotExist).",
    # ports
    "toPorts": _PORT_RULES,
    "ports": "Ports and protocols (at most 40). A packet matches when it matches any of them.",
    "port": "A port number (1-65535), a named container port, or 0 for every port.",
    "endPort": "Makes port the start of a range that ends here (inclusive).",
    "protocol": "TCP, UDP, SCTP or ANY (default: ANY).",
    "icmps": _ICMPS,
    "fields": "ICMP message types (at most 40).",
    "family": "IPv4 (default) or IPv6.",
    "type": "An ICMP type number or name, e.g. 8 or EchoRequest.",
    # L7
    "rules": (
        "L7 rules for these ports: http (traffic goes through the node's Envoy) or dns (through the "
        "node's DNS proxy). A request that no rule allows is denied (HTTP 403, DNS REFUSED)."
    ),
    "http": "HTTP rules: a request is allowed when it matches every field of any one rule.",
    "method": "A regular expression (RE2) the whole request method must match, e.g. GET or GET|HEAD.",
    "path": "A regular expression (RE2) the whole path, query string included, must match, e.g. /api/.*.",
    "host": "A regular expression (RE2) the whole Host header (without port) must match.",
    "headers": 'Headers that must be present: "Name" (any value) or "Name: value" (exact value).',
    "headerMatches": "Header values to check, optionally taken from a Secret.",
    "headerMatches.name": "The header name (case-insensitive).",
    "headerMatches.value": "The exact value the header must have (or give secret).",
    "headerMatches.secret": (
        "A Secret with one entry, whose value the header must have. Keep it in the agent's secrets "
        "namespace (l7gate-secrets by default), the only namespace the agent may read Secrets from."
    ),
    "headerMatches.mismatch": (
        "What to do when the header does not match: LOG (allow and log), ADD, DELETE or REPLACE the "
        "header. Without mismatch the request is denied."
    ),
    "secret.namespace": (
        "The Secret's namespace: the agent's secrets namespace (l7gate-secrets by default), the only one "
        "it may read Secrets from."
    ),
    "secret.name": "The Secret's name.",
    "dns": (
        "DNS rules: names the endpoints may look up through the node's DNS proxy. Other names get REFUSED."
    ),
    "dns.matchName": "An exact DNS name (case-insensitive, trailing dot optional).",
    "dns.matchPattern": (
        "A DNS name pattern: * matches within one label, a leading **. matches one or more labels, "
        "* alone matches every name."
    ),
    # TLS
    "serverNames": "TLS server names (SNI) the connection must ask for; the port is only allowed for them.",
    "terminatingTLS": _TLS.format(
        side="termination (Envoy presents this certificate to the client)",
        why="Needed for HTTP rules on a TLS port.",
    ),
    "originatingTLS": _TLS.format(
        side="origination (Envoy connects to the server with TLS and checks its certificate)",
        why="Used together with terminatingTLS.",
    ),
    "terminatingTLS.secret": (
        "The Secret with the certificate and key (read in the agent's secrets namespace)."
    ),
    "originatingTLS.secret": "The Secret with the trusted CA (read in the agent's secrets namespace).",
    "trustedCA": _TLS_ITEM.format(what="the trusted CA certificates", default="ca.crt"),
    "certificate": _TLS_ITEM.format(what="the certificate chain", default="tls.crt"),
    "privateKey": _TLS_ITEM.format(what="the private key", default="tls.key"),
}

_MARKUP = re.compile(r"``([^`]*)``|`([^`]*)`|\*\*([^*]+)\*\*|(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])")


def plain(text: str) -> str:
    """A docstring as plain text: reStructuredText/Markdown literals and emphasis unwrapped, lines joined."""
    unwrapped = _MARKUP.sub(lambda m: next(g for g in m.groups() if g is not None), text)
    return " ".join(unwrapped.split())


def has_markup(text: str) -> bool:
    return _MARKUP.search(text) is not None


def field_doc(parent: str, name: str) -> str | None:
    """The description of field ``name`` inside field ``parent`` (``spec`` at the top)."""
    return FIELD_DOCS.get(f"{parent}.{name}") or FIELD_DOCS.get(name)
