"""Type URLs of the resources the server serves, their push order, and cross-references between them."""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

_PREFIX = "type.googleapis.com/envoy."

CLUSTER = _PREFIX + "config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "config.listener.v3.Listener"
ROUTE = _PREFIX + "config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "extensions.transport_sockets.tls.v3.Secret"

#: Make-before-break: a listener is only sent once the clusters it needs were sent, and so on.
ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

#: Types whose SotW responses carry the complete state (an absent resource is removed) and whose
#: empty subscription means "everything" (wildcard).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}


def short(type_url: str) -> str:
    """``CDS``/``EDS``/``LDS``/``RDS`` for the log, the type URL otherwise."""
    return SHORT_NAMES.get(type_url, type_url)


def listener_route_names(listener: listener_pb2.Listener) -> Iterator[str]:
    """The RDS route configuration names a listener's HTTP connection managers use."""
    chains = [*listener.filter_chains]
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.type_url != HCM_TYPE:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(hcm)
            if hcm.HasField("rds"):
                yield hcm.rds.route_config_name


_TLS_CONTEXTS = {
    "type.googleapis.com/" + kind.DESCRIPTOR.full_name: kind
    for kind in (tls_pb2.DownstreamTlsContext, tls_pb2.UpstreamTlsContext)
}


def transport_secret_names(socket: base_pb2.TransportSocket) -> Iterator[str]:
    """The SDS secret names a TLS transport socket uses."""
    kind = _TLS_CONTEXTS.get(socket.typed_config.type_url)
    if kind is None:
        return
    context = kind()
    socket.typed_config.Unpack(context)
    common = context.common_tls_context
    yield from (c.name for c in common.tls_certificate_sds_secret_configs)
    if common.HasField("validation_context_sds_secret_config"):
        yield common.validation_context_sds_secret_config.name


def listener_secret_names(listener: listener_pb2.Listener) -> Iterator[str]:
    for chain in [*listener.filter_chains, listener.default_filter_chain]:
        if chain.HasField("transport_socket"):
            yield from transport_secret_names(chain.transport_socket)


def route_cluster_names(route_config: route_pb2.RouteConfiguration) -> Iterator[str]:
    """The cluster names a route configuration forwards to."""
    for virtual_host in route_config.virtual_hosts:
        for route in virtual_host.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            if action.cluster:
                yield action.cluster
            for weighted in action.weighted_clusters.clusters:
                yield weighted.name
