"""Resource builders and a test ADS client (SotW and Delta) for the protocol tests."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from l7.policy.model import HTTPRule
from l7xds import resources as rt
from l7xds.server import SERVICE
from l7xds.snapshot import Resource, Snapshot
from l7xds.translate import ProxySettings, translate

NODE = "node-1"


def snapshot(ports: dict[int, tuple[HTTPRule, ...]], *, eds: dict[str, str] | None = None) -> Snapshot:
    """Listeners/routes for ``ports``, the ORIGINAL_DST cluster, and EDS clusters {name: endpoint IP}."""
    resources = [Resource.encode(t, m) for t, m in translate(ports, ProxySettings())]
    for name, ip in (eds or {}).items():
        cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        cluster.eds_cluster_config.eds_config.ads.SetInParent()
        resources.append(Resource.encode(rt.CLUSTER, cluster))
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        lb = cla.endpoints.add().lb_endpoints.add()
        lb.endpoint.address.socket_address.address = ip
        lb.endpoint.address.socket_address.port_value = 80
        resources.append(Resource.encode(rt.ENDPOINT, cla))
    return Snapshot(resources)


GET_PUBLIC = (HTTPRule(method="GET", path="/public"),)
PUT_ANY = (HTTPRule(method="PUT"),)

_probes = itertools.count()


class AdsClient:
    """One ADS stream. ``barrier()`` proves that no other response is pending before it."""

    def __init__(self, address: str, *, delta: bool = False) -> None:
        self.delta = delta
        self._channel = grpc.aio.insecure_channel(address)
        method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
        request = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        response = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        self._call: Any = self._channel.stream_stream(
            f"/{SERVICE}/{method}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )()
        self._first = True

    async def send(self, **fields: Any) -> None:
        cls = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        request = cls(**fields)
        if self._first:
            request.node.id = NODE
            self._first = False
        await self._call.write(request)

    async def recv(self, timeout: float = 5.0) -> Any:
        response = await asyncio.wait_for(self._call.read(), timeout)
        assert response is not grpc.aio.EOF
        assert response.nonce
        if not self.delta:
            names = [self.name_of(r) for r in response.resources]
            assert len(names) == len(set(names)), names
        else:
            names = [r.name for r in response.resources]
            assert len(names) == len(set(names)), names
        return response

    @staticmethod
    def name_of(packed: Any) -> str:
        for type_url, cls in _CLASSES.items():
            if packed.type_url == type_url:
                message = cls()
                packed.Unpack(message)
                return str(getattr(message, "name", "") or getattr(message, "cluster_name", ""))
        raise AssertionError(packed.type_url)

    def names(self, response: Any) -> list[str]:
        if self.delta:
            return [r.name for r in response.resources]
        return [self.name_of(r) for r in response.resources]

    async def ack(self, response: Any, names: list[str] | None = None) -> None:
        if self.delta:
            await self.send(type_url=response.type_url, response_nonce=response.nonce)
        else:
            await self.send(
                type_url=response.type_url,
                version_info=response.version_info,
                response_nonce=response.nonce,
                resource_names=names or [],
            )

    async def nack(self, response: Any, version: str = "", names: list[str] | None = None) -> None:
        error = status_pb2.Status(code=3, message="rejected by the test")
        if self.delta:
            await self.send(type_url=response.type_url, response_nonce=response.nonce, error_detail=error)
        else:
            await self.send(
                type_url=response.type_url,
                version_info=version,
                response_nonce=response.nonce,
                resource_names=names or [],
                error_detail=error,
            )

    async def barrier(self) -> None:
        """Ask for a fresh (unknown) type: its answer must be the very next response."""
        type_url = f"type.googleapis.com/l7gate.test.Probe{next(_probes)}"
        if self.delta:
            await self.send(type_url=type_url, resource_names_subscribe=["probe"])
        else:
            await self.send(type_url=type_url, resource_names=["probe"])
        response = await self.recv()
        assert response.type_url == type_url, f"unexpected response before the barrier: {response}"

    async def close(self) -> None:
        self._call.cancel()
        await self._channel.close()


_CLASSES: dict[str, Any] = {}


def _register() -> None:
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2

    _CLASSES.update(
        {
            rt.CLUSTER: cluster_pb2.Cluster,
            rt.ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
            rt.LISTENER: listener_pb2.Listener,
            rt.ROUTE: route_pb2.RouteConfiguration,
        }
    )


_register()
