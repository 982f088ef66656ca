"""TLS on a proxy port (pure): SNI filtering and TLS interception, with certificates served over SDS.

::

    PortTLS ──► listener: tls_inspector, filter_chain_matcher on the SNI (RE2, whole value), the chain
                │         TLS-terminating (DownstreamTlsContext → SDS "l7gate-tls-cert/NS/NAME/CRT,KEY",
                │         ALPN h2 and http/1.1)
                │         or passing the bytes through (tcp_proxy to the original destination)
                └──► cluster "l7gate-original-dst-tls-<hash>": ORIGINAL_DST, UpstreamTlsContext
                          (validation context → SDS "l7gate-tls-ca/NS/NAME/CA"; with tls.crt/tls.key
                          in that secret, a client certificate: mTLS), SNI = the request's host
    TLSSecrets ─► Secret resources (their content changes alone on rotation: no listener drain)

Fail closed: a port whose secrets are missing or malformed gets a listener whose only chain matches
no connection (Envoy closes every connection); never a plaintext fallback.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2, config_source_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, wrappers_pb2  # type: ignore[import-untyped]
from xds.core.v3 import extension_pb2  # type: ignore[import-untyped]
from xds.type.matcher.v3 import matcher_pb2, regex_pb2  # type: ignore[import-untyped]

from l7.policy import servernames

SecretKey = tuple[str, str]  # (namespace, name)
#: (namespace, name) → item name → text (the Kubernetes Secret keys as files: tls.crt, tls.key, ca.crt)
TLSSecrets = Mapping[SecretKey, Mapping[str, str]]

DEFAULT_NAMESPACE = "default"
CERT_ITEM, KEY_ITEM, CA_ITEM = "tls.crt", "tls.key", "ca.crt"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CHAIN = "l7gate"


@dataclass(frozen=True, order=True)
class TLSRef:
    """A Secret and the items used (Cilium's defaults when the policy names none)."""

    namespace: str
    name: str
    certificate: str = CERT_ITEM
    private_key: str = KEY_ITEM
    trusted_ca: str = CA_ITEM

    @classmethod
    def of(cls, context: Any) -> TLSRef:
        """From a policy :class:`l7.policy.model.TLSContext`."""
        return cls(
            context.secret.namespace or DEFAULT_NAMESPACE,
            context.secret.name,
            context.certificate or CERT_ITEM,
            context.private_key or KEY_ITEM,
            context.trusted_ca or CA_ITEM,
        )

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cert_secret(self) -> str:
        return f"l7gate-tls-cert/{self.where}/{self.certificate},{self.private_key}"

    @property
    def ca_secret(self) -> str:
        return f"l7gate-tls-ca/{self.where}/{self.trusted_ca}"


@dataclass(frozen=True)
class PortTLS:
    """TLS of one proxy port: allowed SNI patterns (empty: any name, or none at all), the terminating
    secret (None: the TLS bytes pass through unread) and the originating one (None: plaintext upstream)."""

    server_names: tuple[str, ...] = ()
    terminating: TLSRef | None = None
    originating: TLSRef | None = None
    problem: str = ""  # set: the port refuses every connection (e.g. members that disagree)

    @property
    def inspects(self) -> bool:
        """The listener reads the ClientHello (SNI filter or termination)."""
        return bool(self.server_names) or self.terminating is not None


def merge(members: Iterable[PortTLS | None]) -> PortTLS | None:
    """The TLS of a union of rule sets on one port: all members must agree on termination and
    origination (else :class:`ValueError`); server names are united (a member without names and
    without termination — plain HTTP — cannot share a port with TLS members)."""
    found = list(members)
    if all(m is None for m in found):
        return None
    if any(m is None for m in found):
        raise ValueError("plaintext HTTP rules and TLS rules on the same port and peer")
    tls = [m for m in found if m is not None]
    contexts = {(m.terminating, m.originating) for m in tls}
    if len(contexts) > 1:
        raise ValueError("different terminatingTLS/originatingTLS secrets on the same port and peer")
    named = [m for m in tls if m.server_names]
    if named and len(named) != len(tls):
        names: tuple[str, ...] = ()  # a member allows any name: so does the union
    else:
        names = tuple(sorted({n for m in tls for n in m.server_names}))
    terminating, originating = contexts.pop()
    return PortTLS(names, terminating, originating)


# --- secrets --------------------------------------------------------------------------------------

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*([A-Za-z0-9+/=\s]+?)-----END \1-----")


def pem_problem(text: str, kinds: tuple[str, ...]) -> str | None:
    """Why ``text`` is not PEM holding at least one block of one of ``kinds`` (each block a DER
    sequence), or None."""
    blocks = _PEM.findall(text)
    if not blocks:
        return "not PEM"
    for kind, body in blocks:
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except binascii.Error:
            return f"PEM block {kind!r} is not base64"
        if not der or der[0] != 0x30:
            return f"PEM block {kind!r} is not DER"
    if not any(kind in kinds for kind, _ in blocks):
        return f"no {' or '.join(kinds)} PEM block"
    return None


CERT_KINDS = ("CERTIFICATE",)
PROBLEM_ITEM = "!problem"  # set by the agent's secret loading (l7.agent.secrets): why a secret is unusable
KEY_KINDS = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")


def secret_problems(ref: TLSRef, secrets: TLSSecrets, *, terminating: bool) -> list[tuple[str, str]]:
    """(item, problem) for each item of ``ref`` a port needs that is missing or malformed."""
    items = secrets.get((ref.namespace, ref.name))
    if items is None:
        return [("", f"secret {ref.where} not found")]
    if PROBLEM_ITEM in items:  # the agent found it unusable as a whole (a certificate and key not a pair)
        return [("", f"secret {ref.where}: {items[PROBLEM_ITEM]}")]
    needed = (
        [(ref.certificate, CERT_KINDS), (ref.private_key, KEY_KINDS)]
        if terminating
        else [(ref.trusted_ca, CERT_KINDS)]
    )
    if not terminating and client_cert(ref, secrets, partial=True):  # mTLS upstream: both or neither
        needed += [(ref.certificate, CERT_KINDS), (ref.private_key, KEY_KINDS)]
    out = []
    for item, kinds in needed:
        text = items.get(item)
        problem = items.get(f"{PROBLEM_ITEM}:{item}")  # the agent could not load the item (OpenSSL)
        if problem is None:
            problem = f"item {item!r} missing" if text is None else pem_problem(text, kinds)
        if problem:
            out.append((item, f"secret {ref.where}: {problem}"))
    return out


def client_cert(ref: TLSRef, secrets: TLSSecrets, *, partial: bool = False) -> bool:
    """Whether an originatingTLS secret holds a client certificate and key (as Cilium, Envoy then presents
    them to the server: mTLS upstream); ``partial``: either item."""
    items = secrets.get((ref.namespace, ref.name)) or {}
    present = [item in items for item in (ref.certificate, ref.private_key)]
    return any(present) if partial else all(present)


def usable(tls: PortTLS, secrets: TLSSecrets) -> bool:
    return not tls.problem and not any(
        secret_problems(ref, secrets, terminating=terminating)
        for ref, terminating in ((tls.terminating, True), (tls.originating, False))
        if ref is not None
    )


def _data(text: str) -> base_pb2.DataSource:
    return base_pb2.DataSource(inline_string=text)


def cert_secret(ref: TLSRef, secrets: TLSSecrets) -> secret_pb2.Secret:
    items = secrets[(ref.namespace, ref.name)]
    return secret_pb2.Secret(
        name=ref.cert_secret,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=_data(items[ref.certificate]), private_key=_data(items[ref.private_key])
        ),
    )


def ca_secret(ref: TLSRef, secrets: TLSSecrets) -> secret_pb2.Secret:
    items = secrets[(ref.namespace, ref.name)]
    return secret_pb2.Secret(
        name=ref.ca_secret,
        validation_context=common_pb2.CertificateValidationContext(trusted_ca=_data(items[ref.trusted_ca])),
    )


def secret_resources(ports: Iterable[PortTLS], secrets: TLSSecrets) -> list[secret_pb2.Secret]:
    """The Secret resources usable ports need, by name (sorted)."""
    out: dict[str, secret_pb2.Secret] = {}
    for tls in ports:
        if not usable(tls, secrets):
            continue
        if tls.terminating is not None:
            out[tls.terminating.cert_secret] = cert_secret(tls.terminating, secrets)
        if tls.originating is not None:
            out[tls.originating.ca_secret] = ca_secret(tls.originating, secrets)
            if client_cert(tls.originating, secrets):
                out[tls.originating.cert_secret] = cert_secret(tls.originating, secrets)
    return [out[name] for name in sorted(out)]


# --- listener pieces -------------------------------------------------------------------------------


def _pack(message: Any) -> any_pb2.Any:
    return any_pb2.Any(
        type_url="type.googleapis.com/" + message.DESCRIPTOR.full_name,
        value=message.SerializeToString(deterministic=True),
    )


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
        ),
    )


TLS_INSPECTOR = listener_components_pb2.ListenerFilter(
    name="envoy.filters.listener.tls_inspector", typed_config=_pack(tls_inspector_pb2.TlsInspector())
)


#: ALPN offered to the pod on an intercepting port: h2 first (the connection manager's codec is AUTO, so
#: an h2 client gets HTTP/2 and the same routes); the upstream stays HTTP/1.1 (:func:`upstream_http_options`).
DOWNSTREAM_ALPN = ("h2", "http/1.1")


def downstream_socket(ref: TLSRef) -> base_pb2.TransportSocket:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[_sds(ref.cert_secret)], alpn_protocols=list(DOWNSTREAM_ALPN)
        )
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_pack(context))


def upstream_socket(ref: TLSRef, with_client_cert: bool = False) -> base_pb2.TransportSocket:
    """Verify the server with the secret's CA; ``with_client_cert`` (:func:`client_cert`): present the
    secret's certificate and key to it (mTLS)."""
    common = tls_pb2.CommonTlsContext(validation_context_sds_secret_config=_sds(ref.ca_secret))
    if with_client_cert:
        common.tls_certificate_sds_secret_configs.append(_sds(ref.cert_secret))
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_pack(context))


def upstream_http_options() -> any_pb2.Any:
    """SNI = the request's host, and the server's certificate must name it."""
    return _pack(
        http_protocol_options_pb2.HttpProtocolOptions(
            upstream_http_protocol_options=protocol_pb2.UpstreamHttpProtocolOptions(
                auto_sni=True, auto_san_validation=True
            ),
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http_protocol_options=protocol_pb2.Http1ProtocolOptions()
            ),
        )
    )


def tls_cluster_name(base: str, ref: TLSRef) -> str:
    return f"{base}-tls-{hashlib.sha256(repr(ref).encode()).hexdigest()[:12]}"


def tcp_proxy(cluster: str, port: int, access_log: Any) -> listener_components_pb2.Filter:
    config = tcp_proxy_pb2.TcpProxy(
        stat_prefix=f"l7gate_tls_{port}", cluster=cluster, access_log=[access_log]
    )
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=_pack(config))


def _action() -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(
        name=CHAIN, typed_config=_pack(wrappers_pb2.StringValue(value=CHAIN))
    )


def authority_regexes(tls: PortTLS | None) -> tuple[str, ...]:
    """The ``:authority`` regexes (one per server name: each stays under Envoy's RE2 program-size limit) a
    request on an intercepting port with serverNames must match one of; empty when there is no such
    check. Without it a client sends a listed SNI and another ``Host`` on the same address: the upstream
    SNI is the request's host (``auto_sni``), so the request reaches that other name (domain fronting
    through the interception)."""
    if tls is None or tls.terminating is None or not tls.server_names:
        return ()
    return tuple(servernames.authority_regex(n) for n in tls.server_names)


def chain_matcher(tls: PortTLS, ok: bool) -> matcher_pb2.Matcher | None:
    """The listener's filter chain matcher: the SNI must match one pattern (no SNI never does); when
    the port's secrets are not ``ok``, no connection matches. None: every connection uses the chain."""
    if ok and not tls.server_names:
        return None
    matcher = matcher_pb2.Matcher()
    if not ok:
        predicate = matcher.matcher_list.matchers.add().predicate.single_predicate
        predicate.input.name = "port"
        predicate.input.typed_config.CopyFrom(_pack(network_inputs_pb2.DestinationPortInput()))
        predicate.value_match.exact = "0"  # never: a connection's destination port is not 0
        matcher.matcher_list.matchers[0].on_match.action.CopyFrom(_action())
        return matcher
    # one matcher per name, tried in order (the first that matches wins): one regex joining every name
    # would pass Envoy's RE2 program-size limit with a few names, and a NACK freezes the node's config
    for name in tls.server_names:
        field = matcher.matcher_list.matchers.add()
        predicate = field.predicate.single_predicate
        predicate.input.name = "sni"
        predicate.input.typed_config.CopyFrom(_pack(network_inputs_pb2.ServerNameInput()))
        predicate.value_match.safe_regex.CopyFrom(
            regex_pb2.RegexMatcher(
                regex=servernames.regex(name), google_re2=regex_pb2.RegexMatcher.GoogleRE2()
            )
        )
        field.on_match.action.CopyFrom(_action())
    return matcher
