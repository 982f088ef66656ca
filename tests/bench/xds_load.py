"""xDS under load: 100 simulated Envoys (grpc.aio ADS clients, SotW and Delta half and half) on one
l7gate xDS server, over loopback.

::

    bench process                                   server subprocess (python -m tests.bench.xds_load --serve)
    ─────────────                                   ───────────────────────────────────────────────────────
    100 clients, one ADS stream each ──gRPC 127.0.0.1──► XdsServer(SnapshotCache, observer)
      CDS + LDS wildcard, RDS by the listeners'           snapshots built before (Translator: P ports,
      route names; every response ACKed at once           10 HTTP rules each; change k edits port k's rules)
                                     ──stdin "set k"──►  publish change k to the 100 node ids, then
                                     ◄──stdout JSON──    report when every node's RDS ACK arrived

Measured:

- change → all 100 clients ACKed (server side: the last node's RDS ACK received), p50/p99 over N changes;
  client side, the same up to the last ACK sent, for comparison. Every client is its own node id, so a
  change is 100 ``set_snapshot`` calls (of the same snapshot); their time is reported on its own;
- bytes per push per client when one route configuration of P changes: SotW (all subscribed routes go
  out again) vs Delta (only the changed one);
- server CPU per push: the server process's user+system CPU time over the changes / changes (the
  snapshots are built before the clock starts: this is serving only);
- a reconnect storm: all 100 streams cancelled and reopened at once (Delta with
  ``initial_resource_versions``, as Envoy does) → time until every node ACKed its routes again.

    .venv/bin/python -m tests.bench.xds_load [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.common import Figure, Options, stop

NAME = "xds_load"
REPO = Path(__file__).resolve().parents[2]
CLIENTS = 100
RULES_PER_PORT = 10
BASE_PORT = 20000
ACK_P99_TARGET_S = 1.0
STEP_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Settings:
    clients: int
    ports: int
    changes: int


QUICK = Settings(clients=CLIENTS, ports=50, changes=8)
FULL = Settings(clients=CLIENTS, ports=200, changes=20)


def _repo_first() -> None:
    from tests.bench.xds_encode import _repo_first as first

    first()


def node_id(i: int) -> str:
    return f"bench-envoy-{i:03d}"


# ----------------------------------------------------------------------------------------- server
def _ports(count: int, change: int | None) -> dict[int, tuple[Any, ...]]:
    from l7.policy.model import HTTPRule

    out: dict[int, tuple[Any, ...]] = {}
    for p in range(count):
        variant = f"-c{change}" if change is not None and p == change % count else ""
        out[BASE_PORT + p] = tuple(
            HTTPRule(
                method="GET|HEAD",
                path=f"/api/v1/items{variant}/{p}-{i}(/.*)?",
                host=f"svc{p}.example.com",
                headers=(f"X-Tenant: t{i}",),
            )
            for i in range(RULES_PER_PORT)
        )
    return out


class _AckWatch:
    """An xDS observer: which node ids ACKed route configurations since :meth:`arm`."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.acked: set[str] = set()
        self.done = asyncio.Event()
        self.at = 0.0
        self.total = 0
        self.nacks = 0

    def arm(self) -> None:
        self.acked = set()
        self.done = asyncio.Event()

    def on_ack(self, event: Any) -> None:
        from l7xds import resources as rt

        self.total += 1
        if event.type_url != rt.ROUTE or self.done.is_set():
            return
        self.acked.add(event.node_id)
        if len(self.acked) >= self.clients:
            self.at = time.monotonic()
            self.done.set()

    def on_nack(self, event: Any) -> None:
        self.nacks += 1


async def serve(settings: Settings) -> None:
    """The server process: reads commands on stdin, answers one JSON line each on stdout."""
    from l7xds.cache import SnapshotCache
    from l7xds.server import XdsServer
    from l7xds.translate import ProxySettings, Translator

    translator, proxy = Translator(), ProxySettings()
    snapshots = [translator.snapshot(_ports(settings.ports, None), proxy)]
    snapshots += [translator.snapshot(_ports(settings.ports, k), proxy) for k in range(settings.changes)]
    cache = SnapshotCache()
    watch = _AckWatch(settings.clients)
    server = XdsServer(cache, watch)
    nodes = [node_id(i) for i in range(settings.clients)]
    for node in nodes:
        cache.set_snapshot(node, snapshots[0])
    address = await server.start("127.0.0.1:0")

    def say(**fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    say(
        address=address,
        pid=os.getpid(),
        resources={t: len(snapshots[0].resources(t)) for t in snapshots[0].type_urls()},
    )
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            command, _, arg = line.strip().partition(" ")
            if command == "quit":
                return
            if command == "watch":  # the next RDS ACK of every node (connect, reconnect storm)
                watch.arm()
                say(ok=True)
                try:
                    await asyncio.wait_for(watch.done.wait(), STEP_TIMEOUT)
                    say(all_acked=watch.at, acks=watch.total, nacks=watch.nacks)
                except TimeoutError:
                    say(all_acked=None, acked=len(watch.acked), acks=watch.total, nacks=watch.nacks)
            elif command == "set":
                snapshot = snapshots[1 + int(arg)]
                watch.arm()
                t_set = time.monotonic()
                for node in nodes:
                    cache.set_snapshot(node, snapshot)
                t_published = time.monotonic()
                try:
                    await asyncio.wait_for(watch.done.wait(), STEP_TIMEOUT)
                    at: float | None = watch.at
                except TimeoutError:
                    at = None
                say(
                    t_set=t_set,
                    t_published=t_published,
                    all_acked=at,
                    acked=len(watch.acked),
                    acks=watch.total,
                    nacks=watch.nacks,
                )
    finally:
        await server.stop(0)


# ---------------------------------------------------------------------------------------- clients
@dataclass
class Received:
    type_url: str
    nbytes: int
    at: float  # monotonic, when its ACK was written


@dataclass
class Client:
    """One simulated Envoy: one ADS stream (SotW or Delta), CDS + LDS wildcard, RDS by name."""

    index: int
    address: str
    delta: bool
    received: list[Received] = field(default_factory=list)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # Delta: type → name → version
    routes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _channel: Any = None
    _call: Any = None
    _task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        import grpc
        from envoy.service.discovery.v3 import discovery_pb2

        from l7xds import resources as rt
        from l7xds.server import SERVICE

        self._channel = grpc.aio.insecure_channel(self.address)
        method = "DeltaAggregatedResources" if self.delta else "StreamAggregatedResources"
        request = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        response = discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse
        self._call = self._channel.stream_stream(
            f"/{SERVICE}/{method}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )()
        first = self._request(type_url=rt.CLUSTER)
        first.node.id = node_id(self.index)
        if self.delta:
            first.initial_resource_versions.update(self.versions.get(rt.CLUSTER, {}))
        await self._call.write(first)
        lds = self._request(type_url=rt.LISTENER)
        if self.delta:
            lds.initial_resource_versions.update(self.versions.get(rt.LISTENER, {}))
        await self._call.write(lds)
        if self.routes:  # a reconnect: Envoy asks for the routes its listeners use right away
            await self._subscribe_routes()
        self._task = asyncio.create_task(self._read())

    def _request(self, **fields: Any) -> Any:
        from envoy.service.discovery.v3 import discovery_pb2

        cls = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        return cls(**fields)

    async def _subscribe_routes(self) -> None:
        from l7xds import resources as rt

        if self.delta:
            req = self._request(type_url=rt.ROUTE, resource_names_subscribe=self.routes)
            req.initial_resource_versions.update(self.versions.get(rt.ROUTE, {}))
        else:
            req = self._request(type_url=rt.ROUTE, resource_names=self.routes)
        await self._call.write(req)

    def _route_names(self, response: Any) -> list[str]:
        from envoy.config.listener.v3 import listener_pb2

        from l7xds import resources as rt

        packed = [r.resource for r in response.resources] if self.delta else list(response.resources)
        names: set[str] = set()
        for item in packed:
            listener = listener_pb2.Listener()
            item.Unpack(listener)
            names.update(rt.listener_route_names(listener))
        return sorted(names)

    async def _read(self) -> None:
        import grpc

        from l7xds import resources as rt

        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    return
                type_url = response.type_url
                if self.delta:
                    known = self.versions.setdefault(type_url, {})
                    for r in response.resources:
                        known[r.name] = r.version
                    for name in response.removed_resources:
                        known.pop(name, None)
                    ack = self._request(type_url=type_url, response_nonce=response.nonce)
                else:
                    ack = self._request(
                        type_url=type_url,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                        resource_names=self.routes if type_url == rt.ROUTE else [],
                    )
                subscribe = type_url == rt.LISTENER and not self.routes
                if subscribe:
                    self.routes = self._route_names(response)
                await self._call.write(ack)
                self.received.append(Received(type_url, response.ByteSize(), time.monotonic()))
                if subscribe:
                    await self._subscribe_routes()
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"{exc.code()}: {exc.details()}")

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()
        self._call = self._channel = self._task = None


# ------------------------------------------------------------------------------------------ bench
class Server:
    """The server subprocess and its line protocol."""

    def __init__(self, settings: Settings) -> None:
        argv = [
            sys.executable,
            "-m",
            "tests.bench.xds_load",
            "--serve",
            f"--clients={settings.clients}",
            f"--ports={settings.ports}",
            f"--changes={settings.changes}",
        ]
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.hello = self._line_blocking()

    def _line_blocking(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the xDS server exited ({self.proc.wait()})")
        data: dict[str, Any] = json.loads(line)
        return data

    async def line(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._line_blocking)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def cpu_seconds(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.send("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop(self.proc)


async def _all_served(
    server: Server, clients: list[Client], start: Any
) -> tuple[float | None, dict[str, Any]]:
    """Arm the server's ACK watch, run ``start()``, return seconds until every node ACKed its routes."""
    server.send("watch")
    await server.line()
    t0 = time.monotonic()
    await start()
    done = await server.line()
    at = done.get("all_acked")
    return (None if at is None else at - t0), done


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def measure_async(settings: Settings) -> dict[str, Any]:
    from l7xds import resources as rt

    server = Server(settings)
    address = server.hello["address"]
    clients = [Client(i, address, delta=i % 2 == 1) for i in range(settings.clients)]
    out: dict[str, Any] = {"settings": settings.__dict__, "resources": server.hello["resources"]}
    try:

        async def connect_all() -> None:
            await asyncio.gather(*(c.connect() for c in clients))

        took, _ = await _all_served(server, clients, connect_all)
        out["initial_connect_s"] = took
        if took is None:
            raise RuntimeError(f"not every client got its routes in {STEP_TIMEOUT:.0f} s")

        server_s: list[float] = []
        publish_s: list[float] = []
        client_s: list[float] = []
        bytes_sotw: list[int] = []
        bytes_delta: list[int] = []
        other_types = 0
        timeouts = 0
        cpu0 = server.cpu_seconds()
        for k in range(settings.changes):
            marks = [len(c.received) for c in clients]
            server.send(f"set {k}")
            done = await server.line()
            if done.get("all_acked") is None:
                timeouts += 1
                server_s.append(STEP_TIMEOUT)
                continue
            server_s.append(done["all_acked"] - done["t_set"])
            publish_s.append(done["t_published"] - done["t_set"])
            last = 0.0
            for c, mark in zip(clients, marks, strict=True):
                new = c.received[mark:]
                routes = [r for r in new if r.type_url == rt.ROUTE]
                other_types += len(new) - len(routes)
                if routes:
                    last = max(last, routes[0].at)
                    (bytes_delta if c.delta else bytes_sotw).append(sum(r.nbytes for r in routes))
            client_s.append(last - done["t_set"])
        cpu = server.cpu_seconds() - cpu0
        out["change"] = {
            "server_all_acked_s": {
                "p50": statistics.median(server_s),
                "p99": _p(server_s, 0.99),
                "max": max(server_s),
                "n": len(server_s),
            },
            "client_last_ack_sent_s": {"p50": statistics.median(client_s), "p99": _p(client_s, 0.99)}
            if client_s
            else None,
            "publish_s": {"p50": statistics.median(publish_s), "max": max(publish_s)} if publish_s else None,
            "timeouts": timeouts,
            "non_route_responses": other_types,
        }
        out["bytes_per_push"] = {
            "sotw_median": statistics.median(bytes_sotw) if bytes_sotw else None,
            "delta_median": statistics.median(bytes_delta) if bytes_delta else None,
            "sotw_pushes": len(bytes_sotw),
            "delta_pushes": len(bytes_delta),
        }
        out["server_cpu"] = {
            "seconds": round(cpu, 3),
            "pushes": settings.changes,
            "clients": settings.clients,
        }

        async def storm() -> None:
            await asyncio.gather(*(c.close() for c in clients))
            await asyncio.gather(*(c.connect() for c in clients))

        took, done = await _all_served(server, clients, storm)
        out["reconnect_storm_s"] = took
        out["reconnect_storm"] = done
        out["client_errors"] = [e for c in clients for e in c.errors][:5]
        return out
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        server.close()


def measure(settings: Settings) -> dict[str, Any]:
    _repo_first()
    return asyncio.run(measure_async(settings))


def run(opts: Options) -> list[Figure]:
    settings = QUICK if opts.quick else FULL
    raw = measure(settings)
    n = settings.clients
    change = raw["change"]
    server_s = change["server_all_acked_s"]
    figures = [
        Figure(
            name=f"change → all {n} clients ACKed (SotW + Delta), p99 (p50 {server_s['p50'] * 1000:,.0f} ms,"
            f" {settings.ports} routes)",
            value=round(server_s["p99"] * 1000, 1),
            unit="ms",
            target=f"<= {ACK_P99_TARGET_S * 1000:g} ms",
            met=change["timeouts"] == 0 and server_s["p99"] <= ACK_P99_TARGET_S,
            details=change,
        )
    ]
    if change["publish_s"] is not None:
        figures.append(
            Figure(
                name=f"of which publishing the change to {n} node ids (set_snapshot each), p50",
                value=round(change["publish_s"]["p50"] * 1000, 1),
                unit="ms",
                details=change["publish_s"],
            )
        )
    push = raw["bytes_per_push"]
    if push["sotw_median"] is not None and push["delta_median"] is not None:
        figures.append(
            Figure(
                name=f"bytes per push per client, one of {settings.ports} routes changed: Delta",
                value=push["delta_median"],
                unit="B",
                baseline=push["sotw_median"],
                baseline_name="SotW",
                target="< SotW (only what changed)",
                met=push["delta_median"] < push["sotw_median"],
                details=push,
            )
        )
    cpu = raw["server_cpu"]
    figures.append(
        Figure(
            name=f"server CPU per push to {n} clients",
            value=round(cpu["seconds"] / max(1, cpu["pushes"]) * 1000, 1),
            unit="ms",
            details=cpu,
        )
    )
    storm = raw["reconnect_storm_s"]
    figures.append(
        Figure(
            name=f"reconnect storm: all {n} clients reconnect at once → all served again",
            value=round((storm if storm is not None else STEP_TIMEOUT) * 1000, 1),
            unit="ms",
            target=f"<= {STEP_TIMEOUT:g} s (no stall)",
            met=storm is not None,
            details={"initial_connect_s": raw["initial_connect_s"], **raw["reconnect_storm"]},
        )
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", action="store_true", help="internal: be the server process")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--ports", type=int, default=FULL.ports)
    parser.add_argument("--changes", type=int, default=FULL.changes)
    args = parser.parse_args()
    if args.serve:
        _repo_first()
        asyncio.run(serve(Settings(args.clients, args.ports, args.changes)))
        return
    print(json.dumps(measure(QUICK if args.quick else FULL), indent=2))


if __name__ == "__main__":
    main()
