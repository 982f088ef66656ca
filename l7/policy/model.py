"""The policy schema: CiliumNetworkPolicy-shaped rules as immutable pydantic models.

Field names are Python-style; the documents use the Cilium (camelCase) spelling as aliases.
Absent list fields are ``None``; an explicitly empty list stays ``()`` — Cilium gives the two
different meanings (``toEntities: []`` selects nothing, a missing ``toEntities`` selects nothing
*of that kind*), and resolution needs to tell them apart.

Every model forbids unknown fields, so an unsupported Cilium feature (``toRequires``,
``rules.kafka``, ...) is an error naming the field instead of being silently ignored.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        loc_by_alias=True,
    )


class Operator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(_Model):
    key: str
    operator: Operator
    values: tuple[str, ...] | None = None


class EndpointSelector(_Model):
    """A Kubernetes label selector; keys may carry a source prefix (``k8s:``, ``any:``, ``reserved:``)."""

    match_labels: dict[str, str] | None = None
    match_expressions: tuple[LabelSelectorRequirement, ...] | None = None

    def __hash__(self) -> int:
        labels = tuple(sorted((self.match_labels or {}).items()))
        return hash((labels, self.match_expressions))


class CIDRRule(_Model):
    cidr: str
    except_: tuple[str, ...] | None = Field(default=None, alias="except")


class Protocol(enum.StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"
    ANY = "ANY"


class PortProtocol(_Model):
    """``port`` is a number (as a string, like Cilium) or a named port; ``endPort`` makes a range."""

    port: str | None = None
    end_port: int | None = None
    protocol: Protocol = Protocol.ANY

    @field_validator("port", mode="before")
    @classmethod
    def _port_text(cls, value: object) -> object:
        """YAML ``port: 80`` is an int; Cilium's schema says string. Names compare in lower case."""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return value.lower()
        return value


class Mismatch(enum.StrEnum):
    LOG = "LOG"
    ADD = "ADD"
    DELETE = "DELETE"
    REPLACE = "REPLACE"


class Secret(_Model):
    namespace: str | None = None
    name: str


class HeaderMatch(_Model):
    name: str
    value: str | None = None
    secret: Secret | None = None
    mismatch: Mismatch | None = None


class HTTPRule(_Model):
    """Method, path and host are RE2 regexes matched against the whole value."""

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[str, ...] | None = None
    header_matches: tuple[HeaderMatch, ...] | None = None


class DNSRule(_Model):
    match_name: str | None = None
    match_pattern: str | None = None


class FQDNSelector(_Model):
    match_name: str | None = None
    match_pattern: str | None = None


class L7Rules(_Model):
    http: tuple[HTTPRule, ...] | None = None
    dns: tuple[DNSRule, ...] | None = None


MAX_PORTS = 40
"""Cilium's CRD limit (``maxItems: 40``) on ``toPorts[].ports`` and ``icmps[].fields``."""


class TLSContext(_Model):
    """``terminatingTLS`` / ``originatingTLS``: a Secret and the names of its items (Cilium's defaults
    ``tls.crt``, ``tls.key``, ``ca.crt`` when omitted)."""

    secret: Secret
    trusted_ca: str | None = Field(default=None, alias="trustedCA")
    certificate: str | None = None
    private_key: str | None = None


class PortRule(_Model):
    ports: tuple[PortProtocol, ...] | None = Field(default=None, max_length=MAX_PORTS)
    rules: L7Rules | None = None
    server_names: tuple[str, ...] | None = None
    terminating_tls: TLSContext | None = Field(default=None, alias="terminatingTLS")
    originating_tls: TLSContext | None = Field(default=None, alias="originatingTLS")


class ICMPField(_Model):
    family: str = "IPv4"
    type: int | str


class ICMPRule(_Model):
    fields: tuple[ICMPField, ...] = Field(max_length=MAX_PORTS)


class K8sServiceNamespace(_Model):
    """A Kubernetes Service by name; no ``namespace`` means the name in *every* namespace (as in Cilium)."""

    service_name: str
    namespace: str | None = None


class K8sServiceSelectorNamespace(_Model):
    """Kubernetes Services by their (Service object's) labels; no ``namespace`` means every namespace."""

    selector: EndpointSelector
    namespace: str | None = None


class Service(_Model):
    """One ``toServices`` entry: exactly one of ``k8sService`` and ``k8sServiceSelector`` (validate.py)."""

    k8s_service: K8sServiceNamespace | None = Field(default=None, alias="k8sService")
    k8s_service_selector: K8sServiceSelectorNamespace | None = Field(default=None, alias="k8sServiceSelector")


class IngressRule(_Model):
    from_endpoints: tuple[EndpointSelector, ...] | None = None
    from_nodes: tuple[EndpointSelector, ...] | None = None
    from_entities: tuple[str, ...] | None = None
    from_cidr: tuple[str, ...] | None = Field(default=None, alias="fromCIDR")
    from_cidr_set: tuple[CIDRRule, ...] | None = Field(default=None, alias="fromCIDRSet")
    to_ports: tuple[PortRule, ...] | None = None
    icmps: tuple[ICMPRule, ...] | None = None


class EgressRule(_Model):
    to_endpoints: tuple[EndpointSelector, ...] | None = None
    to_entities: tuple[str, ...] | None = None
    to_cidr: tuple[str, ...] | None = Field(default=None, alias="toCIDR")
    to_cidr_set: tuple[CIDRRule, ...] | None = Field(default=None, alias="toCIDRSet")
    to_fqdns: tuple[FQDNSelector, ...] | None = Field(default=None, alias="toFQDNs")
    to_services: tuple[Service, ...] | None = None
    to_nodes: tuple[EndpointSelector, ...] | None = None
    to_ports: tuple[PortRule, ...] | None = None
    icmps: tuple[ICMPRule, ...] | None = None


class DefaultDeny(_Model):
    ingress: bool | None = None
    egress: bool | None = None


class Rule(_Model):
    """One entry of ``spec`` / ``specs``."""

    endpoint_selector: EndpointSelector | None = None
    node_selector: EndpointSelector | None = None
    ingress: tuple[IngressRule, ...] | None = None
    ingress_deny: tuple[IngressRule, ...] | None = None
    egress: tuple[EgressRule, ...] | None = None
    egress_deny: tuple[EgressRule, ...] | None = None
    description: str | None = None
    enable_default_deny: DefaultDeny | None = None
