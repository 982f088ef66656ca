"""Envoy's bootstrap: ADS over gRPC to l7gate's xDS server, dynamic LDS/CDS, a local admin endpoint.

Addresses are ``unix:/path`` or ``host:port``. :func:`bootstrap` returns the configuration as a dict,
:func:`render` as YAML text (Envoy picks the parser from the file name: write it to ``*.yaml``).
``envoy/bootstrap.example.yaml`` is :func:`render` of :data:`EXAMPLE` (a test keeps them in step).
"""

from __future__ import annotations

from typing import Any

import yaml

from l7xds.errors import XdsError

XDS_CLUSTER = "l7gate-xds"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _address(address: str) -> dict[str, Any]:
    if address.startswith("unix:"):
        return {"pipe": {"path": address.removeprefix("unix:")}}
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise XdsError(f"address {address!r}: expected unix:/path or host:port")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def bootstrap(
    *,
    node_id: str,
    xds_address: str,
    admin_address: str,
    node_cluster: str = "l7gate",
    delta: bool = False,
) -> dict[str, Any]:
    """The bootstrap of a node's Envoy. ``delta`` selects the incremental ADS variant."""
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": {"address": _address(admin_address)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        _HTTP_OPTIONS: {
                            "@type": "type.googleapis.com/" + _HTTP_OPTIONS,
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(xds_address)}}]}],
                    },
                }
            ]
        },
    }


def render(config: dict[str, Any]) -> str:
    text: str = yaml.safe_dump(config, sort_keys=False)
    return text


#: The example rendered into envoy/bootstrap.example.yaml (what the Envoy DaemonSet mounts).
EXAMPLE: dict[str, Any] = {
    "node_id": "NODE_NAME",
    "xds_address": "unix:/run/l7gate/xds.sock",
    "admin_address": "unix:/run/l7gate/envoy-admin.sock",
}
