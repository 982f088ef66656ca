"""Pure translation of per-port HTTP rule sets into Envoy resources (xds-protos messages).

::

    {proxy port: (HTTPRule, ...)}  ──►  Listener per port (transparent, original_dst, HCM with RDS)
                                   ──►  RouteConfiguration per port's rule set (``l7gate-http-PORT``)
                                   ──►  one ORIGINAL_DST Cluster (upstream sockets carry SO_MARK)

Matching (DESIGN.md "L7 HTTP"): every regex is RE2 matched against the whole value.

- method: ``:method`` header, case-sensitive (``get`` is not ``GET``).
- path: the whole ``:path`` header *including the query string*, as Cilium does (``/public`` does not
  allow ``/public?x=1``); Envoy normalises the path first (normalize_path, merge_slashes, escaped
  slashes unescaped) and forwards exactly the path that was checked.
- host: ``:authority``, ignoring case, an optional trailing dot and an optional ``:port``.
- headers: ``"Name: value"`` exact value, ``"Name"`` presence (split at the first space, like Cilium).
  A header sent more than once is first joined into one field (values in order, separated by ``,``;
  ``cookie`` by ``; ``) by a Lua filter in front of the router (RFC 9110 5.3), so the value that is
  matched is the value the backend receives: ``X-Token: evil`` plus ``X-Token: abc`` is ``evil,abc``, and
  does not equal ``abc``. (Envoy >= 1.39 alone matches each occurrence and lets the pair through.)
- headerMatches: exact value (or a secret's value), presence when neither is given. Without
  ``mismatch`` a mismatch means the rule does not match. With ``mismatch`` the request passes and the
  action is applied when the header mismatches: ADD appends the header with the value, DELETE removes
  it, REPLACE sets it to the value (applied unconditionally: a matching header already has that value),
  LOG only lets the request pass (the access log records every request).
- a rule referring to a secret the caller could not resolve never matches.
- an empty rule set allows every request; CONNECT is always denied, and so are paths that common
  backends resolve to another path than the one checked (:data:`AMBIGUOUS_PATH`: ``;`` path parameters,
  an encoded ``;``, double-encoded ``. / \\ ;``), also in audit mode.
- WebSocket upgrades are routed like any request (allowed routes forward them, the rest gets 403).
- anything not allowed gets ``403`` with body ``Access denied\\r\\n``; so does any other 403 that Envoy
  makes itself (e.g. an Upgrade type it does not proxy). A denied request is answered after a 1 ms delay
  (fault filter), never in the same event as the response before it: Envoy's HTTP/1 codec closes a
  connection that has more than two responses not yet written, which lost the request pipelined after a
  deny.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Hashable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    socket_option_pb2,
    substitution_format_string_pb2,
)
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2  # type: ignore[import-untyped]

from l7.policy.headers import parse_header
from l7.policy.model import HeaderMatch, HTTPRule, Mismatch
from l7.policy.regex import AMBIGUOUS_PATH, envoy_host_regex
from l7xds import resources as rt
from l7xds import tls as tl
from l7xds.errors import TranslationError
from l7xds.snapshot import Encoder, Resource, Snapshot

RuleSet = tuple[HTTPRule, ...]
SecretKey = tuple[str, str]

DENY_BODY = "Access denied\r\n"
SO_MARK_LEVEL = 1  # SOL_SOCKET
SO_MARK_NAME = 36  # SO_MARK
MAX_CONDITIONAL_MISMATCHES = 4  # ADD/DELETE headerMatches per rule: 2**n routes
DENY_DELAY_MS = 1  # a deny is answered in a later event than the response before it (see the docstring)
host_regex = envoy_host_regex  # the :authority regex of a host rule; policy trace matches the same one


#: Joins every header sent more than once into one field before the routes see the request (and clears
#: the route cache, so the routes match the joined value); the backend receives that one field.
JOIN_REPEATED_HEADERS_LUA = """\
function envoy_on_request(handle)
  local headers = handle:headers()
  local seen, repeated = {}, {}
  for name, _ in pairs(headers) do
    if seen[name] then
      repeated[#repeated + 1] = name
    end
    seen[name] = true
  end
  for _, name in ipairs(repeated) do
    local count = headers:getNumValues(name)
    if count > 1 then
      local values = {}
      for i = 0, count - 1 do
        values[#values + 1] = headers:getAtIndex(name, i)
      end
      headers:replace(name, table.concat(values, name == "cookie" and "; " or ","))
    end
  end
end
"""

#: The access log's JSON fields (the agent parses these).
ACCESS_LOG_FIELDS: Mapping[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "authority": "%REQ(:AUTHORITY)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "route": "%ROUTE_NAME%",
    "downstream_remote": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "downstream_local": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_local": "%UPSTREAM_LOCAL_ADDRESS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
}


@dataclass(frozen=True)
class ProxySettings:
    """Everything translation needs besides the rules. ``secrets`` maps (namespace, name) → value;
    a secret without a namespace is looked up in ``default`` (as in Cilium)."""

    upstream_mark: int = 0
    access_log_path: str | None = None  # None: JSON lines on Envoy's stdout
    cluster_name: str = "l7gate-original-dst"
    connect_timeout_s: float = 5.0
    ipv6: bool = True
    secrets: Mapping[SecretKey, str] = field(default_factory=dict)
    tls_secrets: tl.TLSSecrets = field(default_factory=dict)  # (namespace, name) → item → PEM text

    def cache_key(self) -> Hashable:
        return (
            self.upstream_mark,
            self.access_log_path,
            self.cluster_name,
            self.connect_timeout_s,
            self.ipv6,
        )


def _pack(message: Any) -> any_pb2.Any:
    """Like ``Any.Pack`` but deterministic (map fields sorted), so equal content hashes equal."""
    return any_pb2.Any(
        type_url="type.googleapis.com/" + message.DESCRIPTOR.full_name,
        value=message.SerializeToString(deterministic=True),
    )


def rule_set_key(rules: RuleSet) -> str:
    """A stable content hash of a rule set (rule order matters)."""
    digest = hashlib.sha256()
    for rule in rules:
        digest.update(rule.model_dump_json(by_alias=True, exclude_none=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def route_config_name(port: int) -> str:
    """Per port, not per content: a rule change is then an RDS-only update (no listener drain)."""
    return f"l7gate-http-{port}"


def listener_name(port: int) -> str:
    return f"l7gate-proxy-{port}"


# --- routes -------------------------------------------------------------------------------------


#: One header condition of a route: (lower-case name, kind, value, inverted); kind is "regex",
#: "exact" or "present". Routes are built in place from these (copying protobuf sub-messages into
#: constructors costs more than the whole serialisation).
_Cond = tuple[str, str, str, bool]


def _set_header(matcher: rc.HeaderMatcher, cond: _Cond) -> None:
    name, kind, value, inverted = cond
    matcher.name = name
    if kind == "regex":
        matcher.string_match.safe_regex.regex = value
    elif kind == "exact":
        matcher.string_match.exact = value
    else:
        matcher.present_match = True
    if inverted:
        matcher.invert_match = True
        if kind == "exact":
            matcher.treat_missing_header_as_empty = True


def _equal(name: str, value: str | None) -> _Cond:
    if value is None:
        return (name.lower(), "present", "", False)
    return (name.lower(), "exact", value, False)


def _unequal(name: str, value: str | None) -> _Cond:
    return (*_equal(name, value)[:3], True)


@dataclass(frozen=True, slots=True)
class _ResolvedHeader:
    name: str
    value: str | None
    mismatch: Mismatch | None


def _resolve(match: HeaderMatch, secrets: Mapping[SecretKey, str]) -> _ResolvedHeader | None:
    value = match.value
    if match.secret is not None:
        found = secrets.get((match.secret.namespace or "default", match.secret.name))
        if found is None:
            return None
        value = found
    return _ResolvedHeader(match.name, value, match.mismatch)


def _add(name: str, value: str, action: int) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=action
    )


def _allow(routes: Any, name: str, headers: list[_Cond], settings: ProxySettings) -> rc.Route:
    route: rc.Route = routes.add(name=name)
    match = route.match
    match.prefix = ""
    for cond in headers:
        _set_header(match.headers.add(), cond)
    action = route.route
    action.cluster = settings.cluster_name
    action.timeout.seconds = 0  # no route timeout (Envoy's default cuts requests after 15 s)
    return route


def _rule_routes(routes: Any, index: int, rule: HTTPRule, settings: ProxySettings) -> None:
    """Append the routes of one rule to ``routes`` (a repeated Route field)."""
    base: list[_Cond] = []
    if rule.method is not None:
        base.append((":method", "regex", rule.method, False))
    if rule.path is not None:
        base.append((":path", "regex", rule.path, False))
    if rule.host is not None:
        base.append((":authority", "regex", host_regex(rule.host), False))
    for entry in rule.headers or ():
        base.append(_equal(*parse_header(entry)))
    conditional: list[_ResolvedHeader] = []
    always_add: list[base_pb2.HeaderValueOption] = []
    for match in rule.header_matches or ():
        resolved = _resolve(match, settings.secrets)
        if resolved is None:
            return  # an unresolvable secret: the rule cannot match
        if resolved.mismatch is None:
            base.append(_equal(resolved.name, resolved.value))
        elif resolved.mismatch is Mismatch.REPLACE:
            always_add.append(
                _add(
                    resolved.name, resolved.value or "", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
                )
            )
        elif resolved.mismatch in (Mismatch.ADD, Mismatch.DELETE):
            conditional.append(resolved)
        # LOG: the request passes either way.
    if len(conditional) > MAX_CONDITIONAL_MISMATCHES:
        raise TranslationError(
            f"rule {index}: at most {MAX_CONDITIONAL_MISMATCHES} headerMatches with mismatch ADD or DELETE"
        )
    if not conditional:  # the common case
        route = _allow(routes, f"allow-{index}", base, settings)
        if always_add:
            route.request_headers_to_add.extend(always_add)
        return
    for mismatched in itertools.product((False, True), repeat=len(conditional)):
        headers = list(base)
        to_add = list(always_add)
        to_remove: list[str] = []
        for header, wrong in zip(conditional, mismatched, strict=True):
            if not wrong:
                headers.append(_equal(header.name, header.value))
                continue
            headers.append(_unequal(header.name, header.value))
            if header.mismatch is Mismatch.ADD:
                to_add.append(
                    _add(header.name, header.value or "", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)
                )
            else:
                to_remove.append(header.name.lower())
        suffix = "".join("m" if wrong else "=" for wrong in mismatched)
        route = _allow(routes, f"allow-{index}-{suffix}", headers, settings)
        route.request_headers_to_add.extend(to_add)
        route.request_headers_to_remove.extend(to_remove)


FAULT_FILTER = "envoy.filters.http.fault"
_DENY_DELAY = None  # the packed per-route fault config of deny routes, built once


def _deny_delay() -> any_pb2.Any:
    global _DENY_DELAY  # noqa: PLW0603
    if _DENY_DELAY is None:
        _DENY_DELAY = _pack(
            fault_pb2.HTTPFault(
                delay=common_fault_pb2.FaultDelay(
                    fixed_delay=duration_pb2.Duration(nanos=DENY_DELAY_MS * 1_000_000),
                    percentage=percent_pb2.FractionalPercent(numerator=100),
                )
            )
        )
    return _DENY_DELAY


def _deny(routes: Any, name: str) -> rc.Route:
    route: rc.Route = routes.add(name=name)
    route.direct_response.status = 403
    route.direct_response.body.inline_string = DENY_BODY
    route.response_headers_to_add.append(
        _add("content-type", "text/plain", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
    )
    route.typed_per_filter_config[FAULT_FILTER].CopyFrom(_deny_delay())
    return route


AMBIGUOUS_PATH_ROUTE = "deny-ambiguous-path"
SERVER_NAME_ROUTE = "deny-host-not-server-name"
"""On an intercepting port with serverNames: the request's host is none of the names (domain fronting)."""
AUDIT_ROUTE = "audit"
"""The route that lets through, in audit mode, what no rule allows (the access log names it)."""


def build_route_configuration(
    name: str,
    rules: RuleSet,
    settings: ProxySettings,
    *,
    deny_all: bool = False,
    audit: bool = False,
    authorities: tuple[str, ...] = (),
) -> route_pb2.RouteConfiguration:
    """The routes of one rule set; ``deny_all`` ignores the rules and denies every request. In ``audit``
    mode a request no rule allows is forwarded by the :data:`AUDIT_ROUTE` route instead of getting 403
    (CONNECT and ambiguous paths stay refused: they are no policy decision). ``authorities``
    (:func:`l7xds.tls.authority_regexes`): a request whose ``:authority`` matches none is refused first
    (:data:`SERVER_NAME_ROUTE`), in audit mode too."""
    config = route_pb2.RouteConfiguration(name=name)
    virtual_host = config.virtual_hosts.add(name="any", domains=["*"])
    routes = virtual_host.routes
    _deny(routes, "deny-connect").match.connect_matcher.SetInParent()
    _deny(routes, AMBIGUOUS_PATH_ROUTE).match.safe_regex.regex = AMBIGUOUS_PATH
    if authorities:
        match = _deny(routes, SERVER_NAME_ROUTE).match
        match.prefix = ""
        for regex in authorities:
            _set_header(match.headers.add(), (":authority", "regex", regex, True))
    if deny_all:
        rules = ()
    elif not rules:
        _allow(routes, "allow-all", [], settings)
    for index, rule in enumerate(rules):
        _rule_routes(routes, index, rule, settings)
    if audit and not deny_all:
        _allow(routes, AUDIT_ROUTE, [], settings)
    else:
        _deny(routes, "deny").match.prefix = ""
    return config


# --- listener and cluster ---------------------------------------------------------------------------


def _socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


@functools.lru_cache(maxsize=16)
def _access_log_of(path: str | None) -> accesslog_pb2.AccessLog:
    """Shared between listeners: callers copy it (constructor arguments are copied), never mutate it."""
    json_format = struct_pb2.Struct()
    json_format.update(dict(ACCESS_LOG_FIELDS))
    log_format = substitution_format_string_pb2.SubstitutionFormatString(json_format=json_format)
    config: Any
    if path is None:
        config = stream_pb2.StdoutAccessLog(log_format=log_format)
        name = "envoy.access_loggers.stdout"
    else:
        config = file_pb2.FileAccessLog(path=path, log_format=log_format)
        name = "envoy.access_loggers.file"
    return accesslog_pb2.AccessLog(name=name, typed_config=_pack(config))


def _access_log(settings: ProxySettings) -> accesslog_pb2.AccessLog:
    return _access_log_of(settings.access_log_path)


_ROUTER = _pack(router_pb2.Router())
_ORIGINAL_DST = _pack(original_dst_pb2.OriginalDst())
_HTTP_FILTERS = (
    # Repeated headers joined before the routes see them (clear_route_cache defaults to true).
    hcm_pb2.HttpFilter(
        name="envoy.filters.http.lua",
        typed_config=_pack(
            lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=JOIN_REPEATED_HEADERS_LUA))
        ),
    ),
    # No fault by default; deny routes configure their delay per route.
    hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=_pack(fault_pb2.HTTPFault())),
    hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_ROUTER),
)


_LOCAL_REPLY = hcm_pb2.LocalReplyConfig(
    mappers=[
        hcm_pb2.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(
                status_code_filter=accesslog_pb2.StatusCodeFilter(
                    comparison=accesslog_pb2.ComparisonFilter(
                        op=accesslog_pb2.ComparisonFilter.EQ,
                        value=base_pb2.RuntimeUInt32(default_value=403, runtime_key="l7gate.deny_status"),
                    )
                )
            ),
            body=base_pb2.DataSource(inline_string=DENY_BODY),
            body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
                text_format_source=base_pb2.DataSource(inline_string="%LOCAL_REPLY_BODY%"),
                content_type="text/plain",
            ),
        )
    ]
)


def build_listener(
    port: int, route_name: str, settings: ProxySettings, tls: tl.PortTLS | None = None
) -> listener_pb2.Listener:
    """The transparent listener of a proxy port; with ``tls``, see :mod:`l7xds.tls`."""
    if tls is None:
        network_filter = _hcm_filter(port, route_name, settings)
    elif tls.server_names and tls.terminating is None and tls.originating is None:
        network_filter = tl.tcp_proxy(settings.cluster_name, port, _access_log(settings))
    else:
        network_filter = _hcm_filter(port, route_name, settings)
    chain = listener_components_pb2.FilterChain(filters=[network_filter])
    listener_filters = [
        listener_components_pb2.ListenerFilter(
            name="envoy.filters.listener.original_dst", typed_config=_ORIGINAL_DST
        )
    ]
    matcher = None
    if tls is not None:
        if tls.inspects:
            listener_filters.append(tl.TLS_INSPECTOR)
        ok = tl.usable(tls, settings.tls_secrets)
        if tls.terminating is not None and ok:  # unusable: no secret referenced, no chain matches
            chain.transport_socket.CopyFrom(tl.downstream_socket(tls.terminating))
        matcher = tl.chain_matcher(tls, ok)
        if matcher is not None:
            chain.name = tl.CHAIN
    additional = []
    if settings.ipv6:
        additional.append(listener_pb2.AdditionalAddress(address=_socket_address("::", port)))
    listener = listener_pb2.Listener(
        name=listener_name(port),
        address=_socket_address("0.0.0.0", port),
        additional_addresses=additional,
        transparent=wrappers_pb2.BoolValue(value=True),
        listener_filters=listener_filters,
        filter_chains=[chain],
    )
    if matcher is not None:
        listener.filter_chain_matcher.CopyFrom(matcher)
    return listener


def _hcm_filter(port: int, route_name: str, settings: ProxySettings) -> listener_components_pb2.Filter:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"l7gate_{port}",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(
            route_config_name=route_name,
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
        http_filters=_HTTP_FILTERS,
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.UNESCAPE_AND_FORWARD,
        access_log=[_access_log(settings)],
        # Without these Envoy answers CONNECT and WebSocket upgrades itself (403, empty body); with them
        # they reach the routes: CONNECT only matches deny-connect (prefix routes never match CONNECT), a
        # WebSocket upgrade is allowed or denied like any request.
        upgrade_configs=[
            hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="CONNECT"),
            hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket"),
        ],
        # Any other 403 that Envoy makes itself (e.g. an Upgrade type it does not proxy) has our body too.
        local_reply_config=_LOCAL_REPLY,
    )
    return listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=_pack(hcm)
    )


def build_cluster(settings: ProxySettings, originating: tl.TLSRef | None = None) -> cluster_pb2.Cluster:
    """The ORIGINAL_DST cluster; with ``originating`` the TLS one (named by :func:`route_settings`)."""
    if originating is not None:
        cluster = build_cluster(
            replace(settings, cluster_name=tl.tls_cluster_name(settings.cluster_name, originating))
        )
        mtls = tl.client_cert(originating, settings.tls_secrets)
        cluster.transport_socket.CopyFrom(tl.upstream_socket(originating, mtls))
        cluster.typed_extension_protocol_options[tl.HTTP_OPTIONS].CopyFrom(tl.upstream_http_options())
        return cluster
    seconds = int(settings.connect_timeout_s)
    cluster = cluster_pb2.Cluster(
        name=settings.cluster_name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration_pb2.Duration(
            seconds=seconds, nanos=int((settings.connect_timeout_s - seconds) * 1e9)
        ),
    )
    if settings.upstream_mark:
        cluster.upstream_bind_config.CopyFrom(
            address_pb2.BindConfig(
                socket_options=[
                    socket_option_pb2.SocketOption(
                        description="SO_MARK: proxy-forwarded traffic",
                        level=SO_MARK_LEVEL,
                        name=SO_MARK_NAME,
                        int_value=settings.upstream_mark,
                        state=socket_option_pb2.SocketOption.STATE_PREBIND,
                    )
                ]
            )
        )
    return cluster


# --- the whole translation --------------------------------------------------------------------------


def route_settings(settings: ProxySettings, tls: tl.PortTLS | None) -> ProxySettings:
    """The settings a port's routes are built with: forwarding to the TLS cluster when it originates."""
    if tls is None or tls.originating is None or not tl.usable(tls, settings.tls_secrets):
        return settings  # an unusable port's chain matches no connection: its routes are never used
    return replace(settings, cluster_name=tl.tls_cluster_name(settings.cluster_name, tls.originating))


def _originating(
    tls: Mapping[int, tl.PortTLS], ports: Iterable[int], secrets: tl.TLSSecrets
) -> list[tl.TLSRef]:
    """The TLS clusters needed: one per originating secret of a usable port."""
    return sorted(
        {
            t.originating
            for p in ports
            if (t := tls.get(p)) is not None and t.originating is not None and tl.usable(t, secrets)
        }
    )


def translate(
    ports: Mapping[int, RuleSet],
    settings: ProxySettings,
    deny: AbstractSet[int] = frozenset(),
    audit: AbstractSet[int] = frozenset(),
    tls: Mapping[int, tl.PortTLS] | None = None,
) -> list[tuple[str, Any]]:
    """(type URL, message) for every resource; deterministic, no side effects. Ports in ``deny`` keep
    their listener but deny every request (their rules are ignored); ports in ``tls`` filter SNI and/or
    intercept TLS (:mod:`l7xds.tls`)."""
    tls = tls or {}
    out: list[tuple[str, Any]] = [(rt.CLUSTER, build_cluster(settings))]
    out += [
        (rt.CLUSTER, build_cluster(settings, ref)) for ref in _originating(tls, ports, settings.tls_secrets)
    ]
    for port in sorted(ports):
        out.append((rt.LISTENER, build_listener(port, route_config_name(port), settings, tls.get(port))))
    for port in sorted(ports):
        name = route_config_name(port)
        config = build_route_configuration(
            name,
            ports[port],
            route_settings(settings, tls.get(port)),
            deny_all=port in deny,
            audit=port in audit,
            authorities=tl.authority_regexes(tls.get(port)),
        )
        out.append((rt.ROUTE, config))
    used = [tls[p] for p in sorted(ports) if p in tls]
    out += [(rt.SECRET, secret) for secret in tl.secret_resources(used, settings.tls_secrets)]
    return out


def snapshot_of(
    ports: Mapping[int, RuleSet],
    settings: ProxySettings,
    deny: AbstractSet[int] = frozenset(),
    audit: AbstractSet[int] = frozenset(),
    tls: Mapping[int, tl.PortTLS] | None = None,
) -> Snapshot:
    """Translate and encode everything (no memo); see :class:`Translator` for repeated builds."""
    return Snapshot(
        Resource.encode(type_url, m) for type_url, m in translate(ports, settings, deny, audit, tls)
    )


class Translator:
    """Builds snapshots, reusing the encoded resources of unchanged rule sets and listeners."""

    def __init__(self) -> None:
        self._encoder = Encoder()
        self._keys: dict[RuleSet, str] = {}

    @property
    def encoded(self) -> int:
        """How many resources were built and encoded so far (the rest came from the memo)."""
        return self._encoder.encoded

    def snapshot(
        self,
        ports: Mapping[int, RuleSet],
        settings: ProxySettings,
        deny: AbstractSet[int] = frozenset(),
        audit: AbstractSet[int] = frozenset(),
        tls: Mapping[int, tl.PortTLS] | None = None,
    ) -> Snapshot:
        """Like :func:`snapshot_of`, re-encoding only what changed since the last call."""
        encoder = self._encoder
        common = settings.cache_key()
        tls = tls or {}
        out = [encoder.encode(rt.CLUSTER, ("cluster", common), lambda: build_cluster(settings))]
        out += [
            encoder.encode(
                rt.CLUSTER,
                ("cluster", common, ref, tl.client_cert(ref, settings.tls_secrets)),  # mTLS or not
                lambda r=ref: build_cluster(settings, r),  # type: ignore[misc]
            )
            for ref in _originating(tls, ports, settings.tls_secrets)
        ]
        keys: dict[RuleSet, str] = {}
        routes = []
        for port in sorted(ports):
            rules = ports[port]
            key = keys.get(rules) or self._keys.get(rules) or rule_set_key(rules)
            keys[rules] = key
            name = route_config_name(port)
            port_tls = tls.get(port)
            port_settings = route_settings(settings, port_tls)
            if port in deny:
                routes.append(
                    encoder.encode(
                        rt.ROUTE,
                        ("route", name, "deny-all", common),
                        lambda n=name: build_route_configuration(n, (), settings, deny_all=True),  # type: ignore[misc]
                    )
                )
            else:
                secrets = _secrets_used(rules, settings.secrets)
                audited = port in audit
                hosts = tl.authority_regexes(port_tls)
                routes.append(
                    encoder.encode(
                        rt.ROUTE,
                        ("route", name, key, secrets, audited, common, port_settings.cluster_name, hosts),
                        lambda n=name, r=rules, a=audited, s=port_settings, h=hosts: (  # type: ignore[misc]
                            build_route_configuration(n, r, s, audit=a, authorities=h)
                        ),
                    )
                )
            ok = port_tls is None or tl.usable(port_tls, settings.tls_secrets)
            out.append(
                encoder.encode(
                    rt.LISTENER,
                    ("listener", port, common, port_tls, ok),
                    lambda p=port, n=name, t=port_tls: build_listener(p, n, settings, t),  # type: ignore[misc]
                )
            )
        used = [tls[p] for p in sorted(ports) if p in tls]
        secrets_out = [
            encoder.encode(rt.SECRET, ("secret", m.SerializeToString(deterministic=True)), lambda m=m: m)  # type: ignore[misc]
            for m in tl.secret_resources(used, settings.tls_secrets)
        ]
        self._keys = keys
        encoder.sweep()
        return Snapshot([*out, *routes, *secrets_out])


def _secrets_used(
    rules: RuleSet, secrets: Mapping[SecretKey, str]
) -> tuple[tuple[SecretKey, str | None], ...]:
    used = []
    for rule in rules:
        for match in rule.header_matches or ():
            if match.secret is not None:
                key = (match.secret.namespace or "default", match.secret.name)
                used.append((key, secrets.get(key)))
    return tuple(used)
