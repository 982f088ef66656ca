"""The ADS gRPC server: wires streams to the snapshot cache. It only publishes, it never builds.

::

    requests ──► reader task ──┐
                               ├─► queue ──► SotwStream / DeltaStream ──► responses
    cache change ─► watcher ───┘

Listens on ``unix:/path`` or ``127.0.0.1:PORT`` (port 0 picks one; :attr:`XdsServer.address` tells).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from l7xds.cache import SnapshotCache
from l7xds.delta import DeltaStream
from l7xds.errors import ServerError
from l7xds.observer import Observer, XdsStats
from l7xds.snapshot import Snapshot
from l7xds.sotw import SotwStream

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


class _Stream(Protocol):
    node_id: str

    def on_request(self, request: Any, snapshot: Snapshot | None) -> list[Any]: ...

    def on_snapshot(self, snapshot: Snapshot | None) -> list[Any]: ...


_CHANGED = object()
_END = object()


class _CancelledAtShutdown(logging.Filter):
    """grpc.aio logs every stream handler it cancels at ``server.stop`` as an unhandled
    ``CancelledError`` with a traceback; at shutdown that is the expected end of a stream, not an error.
    (Ending the handlers ourselves before ``stop`` leaves grpc events for a loop that is about to close.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


logging.getLogger("grpc._cython.cygrpc").addFilter(_CancelledAtShutdown())


class XdsServer:
    """An ADS server (SotW and Delta) serving the snapshots of ``cache``."""

    def __init__(self, cache: SnapshotCache, observer: Observer | None = None) -> None:
        self.cache = cache
        self.observer: Observer = observer if observer is not None else XdsStats()
        self.address = ""
        self.streams = 0
        self._server: Any = None

    async def start(self, listen: str) -> str:
        """Start serving on ``listen`` (``unix:/path`` or ``host:port``); return the bound address."""
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._sotw,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._delta,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
                ),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        try:
            port = server.add_insecure_port(listen)
            await server.start()
        except (RuntimeError, grpc.RpcError) as exc:
            raise ServerError(f"cannot listen on {listen}: {exc}") from exc
        if listen.startswith("unix:"):
            self.address = listen
        else:
            host = listen.rsplit(":", 1)[0]
            self.address = f"{host}:{port}"
        self._server = server
        log.info("xDS server listening on %s", self.address)
        return self.address

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    # grpc.aio needs async generator functions as stream handlers.
    async def _sotw(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for response in self._serve(requests, SotwStream(self.observer)):
            yield response

    async def _delta(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for response in self._serve(requests, DeltaStream(self.observer)):
            yield response

    async def _serve(self, requests: AsyncIterator[Any], stream: _Stream) -> AsyncIterator[Any]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(self._read(requests, queue))]
        self.streams += 1
        generation = -1
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if item is _CHANGED:
                    generation = self.cache.generation(stream.node_id)
                    responses = stream.on_snapshot(self.cache.snapshot(stream.node_id))
                else:
                    first = not stream.node_id
                    snapshot = self.cache.snapshot(stream.node_id or _node_id(item))
                    responses = stream.on_request(item, snapshot)
                    if first and stream.node_id:
                        generation = self.cache.generation(stream.node_id)
                        tasks.append(asyncio.create_task(self._watch(stream.node_id, generation, queue)))
                        log.info("xDS stream opened by node %s", stream.node_id)
                for response in responses:
                    yield response
        finally:
            self.streams -= 1
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            log.info("xDS stream of node %s closed", stream.node_id or "?")

    @staticmethod
    async def _read(requests: AsyncIterator[Any], queue: asyncio.Queue[object]) -> None:
        try:
            async for request in requests:
                await queue.put(request)
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            log.debug("xDS stream ended: %s", exc)
        finally:
            await queue.put(_END)

    async def _watch(self, node_id: str, generation: int, queue: asyncio.Queue[object]) -> None:
        while True:
            generation = await self.cache.wait_newer(node_id, generation)
            await queue.put(_CHANGED)


def _node_id(request: Any) -> str:
    node_id: str = request.node.id
    return node_id
