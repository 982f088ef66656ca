"""ADS protocol tests against the real grpc.aio server with a test client (black box)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from l7.policy.model import HTTPRule
from l7xds import resources as rt
from l7xds.cache import SnapshotCache
from l7xds.errors import InconsistentSnapshotError
from l7xds.observer import XdsStats
from l7xds.server import XdsServer
from tests.xds.builders import GET_PUBLIC, NODE, PUT_ANY, AdsClient, snapshot

pytestmark = pytest.mark.anyio


class Harness:
    def __init__(self, server: XdsServer, cache: SnapshotCache, stats: XdsStats) -> None:
        self.server, self.cache, self.stats = server, cache, stats
        self.clients: list[AdsClient] = []

    def client(self, *, delta: bool = False) -> AdsClient:
        client = AdsClient(self.server.address, delta=delta)
        self.clients.append(client)
        return client


@pytest.fixture
async def xds(tmp_path: Path) -> AsyncIterator[Harness]:
    cache, stats = SnapshotCache(), XdsStats()
    server = XdsServer(cache, stats)
    await server.start(f"unix:{tmp_path}/xds.sock")
    harness = Harness(server, cache, stats)
    try:
        yield harness
    finally:
        for client in harness.clients:
            await client.close()
        await server.stop(0)


# --- SotW --------------------------------------------------------------------------------------------


async def test_sotw_ack_and_wildcard_and_named(xds: Harness) -> None:
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC, 2: PUT_ANY}))
    client = xds.client()
    await client.send(type_url=rt.CLUSTER)
    cds = await client.recv()
    assert client.names(cds) == ["l7gate-original-dst"]
    await client.ack(cds)
    await client.send(type_url=rt.LISTENER)
    lds = await client.recv()
    assert sorted(client.names(lds)) == ["l7gate-proxy-1", "l7gate-proxy-2"]
    await client.ack(lds)
    await client.send(type_url=rt.ROUTE, resource_names=["l7gate-http-1"])
    rds = await client.recv()
    assert client.names(rds) == ["l7gate-http-1"]
    await client.ack(rds, ["l7gate-http-1", "l7gate-http-2"])  # ACK that also widens the subscription
    rds2 = await client.recv()
    assert sorted(client.names(rds2)) == ["l7gate-http-1", "l7gate-http-2"]
    assert rds2.version_info != rds.version_info
    await client.ack(rds2, ["l7gate-http-1", "l7gate-http-2"])
    await client.barrier()
    assert xds.stats.acked[NODE, rt.ROUTE] == rds2.version_info
    assert xds.stats.nacks == 0

    # A change to one route configuration only: LDS/CDS are not resent; removed listeners disappear.
    xds.cache.set_snapshot(NODE, snapshot({1: PUT_ANY}))
    lds2 = await client.recv()
    assert lds2.type_url == rt.LISTENER and client.names(lds2) == ["l7gate-proxy-1"]
    rds3 = await client.recv()
    assert rds3.type_url == rt.ROUTE and client.names(rds3) == ["l7gate-http-1"]
    await client.barrier()


async def test_sotw_nack_is_held_back_and_a_later_version_is_sent(xds: Harness) -> None:
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC}))
    client = xds.client()
    await client.send(type_url=rt.LISTENER)
    good = await client.recv()
    await client.ack(good)
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC, 2: GET_PUBLIC}))
    bad = await client.recv()
    await client.nack(bad, version=good.version_info)
    await client.barrier()  # nothing resent
    assert xds.stats.nacks == 1
    event = xds.stats.last_nack[NODE, rt.LISTENER]
    assert event.nonce == bad.nonce and event.version == bad.version_info
    assert sorted(event.resource_names) == ["l7gate-proxy-1", "l7gate-proxy-2"]
    assert "rejected by the test" in event.message
    # Republishing the same content does not resend the rejected version either.
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC, 2: GET_PUBLIC}))
    await client.barrier()
    xds.cache.set_snapshot(NODE, snapshot({3: GET_PUBLIC}))
    fixed = await client.recv()
    assert client.names(fixed) == ["l7gate-proxy-3"]
    assert fixed.version_info not in (bad.version_info, good.version_info)


async def test_sotw_stale_nonce_is_ignored(xds: Harness) -> None:
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC, 2: PUT_ANY}))
    client = xds.client()
    await client.send(type_url=rt.ROUTE, resource_names=["l7gate-http-1"])
    first = await client.recv()
    xds.cache.set_snapshot(NODE, snapshot({1: PUT_ANY, 2: PUT_ANY}))
    second = await client.recv()
    assert second.nonce != first.nonce
    acks = xds.stats.acks
    # A late answer to the first response, even one that changes the subscription, is stale.
    await client.ack(first, ["l7gate-http-1", "l7gate-http-2"])
    await client.barrier()
    assert xds.stats.acks == acks
    await client.ack(second, ["l7gate-http-1", "l7gate-http-2"])
    third = await client.recv()
    assert sorted(client.names(third)) == ["l7gate-http-1", "l7gate-http-2"]


async def test_sotw_reconnect_gets_current_state(xds: Harness) -> None:
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC}))
    client = xds.client()
    await client.send(type_url=rt.LISTENER)
    old = await client.recv()
    await client.close()
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC, 2: GET_PUBLIC}))
    again = xds.client()
    # Envoy reconnects with the version it has and a nonce of the previous stream.
    await again.send(type_url=rt.LISTENER, version_info=old.version_info, response_nonce=old.nonce)
    current = await again.recv()
    assert sorted(again.names(current)) == ["l7gate-proxy-1", "l7gate-proxy-2"]


async def test_sotw_waits_for_a_snapshot(xds: Harness) -> None:
    client = xds.client()
    await client.send(type_url=rt.CLUSTER)
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC}))
    cds = await client.recv()
    assert client.names(cds) == ["l7gate-original-dst"]


async def test_sotw_make_before_break_order(xds: Harness) -> None:
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC}, eds={"svc": "10.214.0.1"}))
    client = xds.client()
    # Subscribe in the "wrong" order; every type gets its first answer.
    await client.send(type_url=rt.ROUTE, resource_names=["l7gate-http-1"])
    await client.ack(await client.recv(), ["l7gate-http-1"])
    await client.send(type_url=rt.LISTENER)
    await client.ack(await client.recv())
    await client.send(type_url=rt.ENDPOINT, resource_names=["svc"])
    await client.ack(await client.recv(), ["svc"])
    await client.send(type_url=rt.CLUSTER)
    await client.ack(await client.recv())
    await client.barrier()
    xds.cache.set_snapshot(
        NODE, snapshot({1: PUT_ANY, 2: PUT_ANY}, eds={"svc": "10.214.0.2", "svc2": "10.214.0.3"})
    )
    order = [(await client.recv()).type_url for _ in range(4)]
    assert order == [rt.CLUSTER, rt.ENDPOINT, rt.LISTENER, rt.ROUTE]


def test_inconsistent_snapshot_is_refused_and_the_old_one_kept() -> None:
    from envoy.config.listener.v3 import listener_pb2

    from l7xds.snapshot import Resource, Snapshot

    cache = SnapshotCache()
    good = snapshot({1: GET_PUBLIC})
    cache.set_snapshot(NODE, good)
    listener = next(iter(good.resources(rt.LISTENER).values())).message
    cluster = next(iter(good.resources(rt.CLUSTER).values()))
    route = next(iter(good.resources(rt.ROUTE).values()))
    with pytest.raises(InconsistentSnapshotError, match="missing route configuration 'l7gate-http-1'"):
        cache.set_snapshot(NODE, Snapshot([Resource.encode(rt.LISTENER, listener), cluster]))
    with pytest.raises(InconsistentSnapshotError, match="missing cluster"):
        cache.set_snapshot(NODE, Snapshot([Resource.encode(rt.LISTENER, listener), route]))
    assert cache.snapshot(NODE) is good

    broken = listener_pb2.Listener()
    broken.CopyFrom(listener)
    chain = broken.filter_chains[0]
    chain.filter_chain_match.prefix_ranges.add(address_prefix="10.214.0.0").prefix_len.value = 33
    broken.filter_chains.add().CopyFrom(chain)
    with pytest.raises(InconsistentSnapshotError) as raised:
        cache.set_snapshot(NODE, Snapshot([Resource.encode(rt.LISTENER, broken), cluster, route]))
    problems = " ".join(raised.value.problems)
    assert "invalid CIDR '10.214.0.0/33'" in problems and "have the same match" in problems
    assert cache.snapshot(NODE) is good

    other = Resource.encode(rt.ROUTE, snapshot({1: PUT_ANY}).resources(rt.ROUTE)["l7gate-http-1"].message)
    with pytest.raises(InconsistentSnapshotError, match="defined twice"):
        Snapshot([route, other])


# --- Delta -------------------------------------------------------------------------------------------


async def test_delta_subscribe_unsubscribe_removed(xds: Harness) -> None:
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC, 2: PUT_ANY}))
    client = xds.client(delta=True)
    await client.send(type_url=rt.LISTENER)  # wildcard
    lds = await client.recv()
    assert sorted(client.names(lds)) == ["l7gate-proxy-1", "l7gate-proxy-2"]
    versions = {r.name: r.version for r in lds.resources}
    await client.ack(lds)
    await client.send(type_url=rt.ROUTE, resource_names_subscribe=["l7gate-http-1"])
    rds = await client.recv()
    assert client.names(rds) == ["l7gate-http-1"] and not rds.removed_resources
    await client.ack(rds)
    # Subscribing again to what the client has is answered with it; an unknown name is reported removed.
    await client.send(type_url=rt.ROUTE, resource_names_subscribe=["l7gate-http-1", "nope"])
    again = await client.recv()
    assert client.names(again) == ["l7gate-http-1"] and list(again.removed_resources) == ["nope"]
    await client.ack(again)
    await client.send(type_url=rt.ROUTE, resource_names_unsubscribe=["l7gate-http-1"])
    await client.barrier()  # unsubscribing is not answered

    xds.cache.set_snapshot(NODE, snapshot({2: GET_PUBLIC}))
    lds2 = await client.recv()
    assert lds2.type_url == rt.LISTENER
    assert list(lds2.removed_resources) == ["l7gate-proxy-1"]
    assert not lds2.resources  # listener 2 did not change: not resent
    await client.ack(lds2)
    await client.barrier()  # route 1 was unsubscribed, "nope" still does not exist: nothing to say
    assert versions["l7gate-proxy-2"]


async def test_delta_initial_resource_versions_is_a_hint(xds: Harness) -> None:
    current = snapshot({1: GET_PUBLIC, 2: PUT_ANY})
    xds.cache.set_snapshot(NODE, current)
    have = {name: r.version for name, r in current.resources(rt.LISTENER).items()}
    client = xds.client(delta=True)
    await client.send(
        type_url=rt.LISTENER,
        initial_resource_versions={
            "l7gate-proxy-1": have["l7gate-proxy-1"],
            "l7gate-proxy-2": "old",
            "gone": "x",
        },
    )
    response = await client.recv()
    assert client.names(response) == ["l7gate-proxy-2"]
    assert list(response.removed_resources) == ["gone"]


async def test_delta_nack_is_held_back(xds: Harness) -> None:
    xds.cache.set_snapshot(NODE, snapshot({1: GET_PUBLIC}))
    client = xds.client(delta=True)
    await client.send(type_url=rt.ROUTE, resource_names_subscribe=["l7gate-http-1"])
    await client.ack(await client.recv())
    xds.cache.set_snapshot(NODE, snapshot({1: PUT_ANY}))
    bad = await client.recv()
    await client.nack(bad)
    await client.barrier()
    event = xds.stats.last_nack[NODE, rt.ROUTE]
    assert event.delta and event.nonce == bad.nonce and event.resource_names == ("l7gate-http-1",)
    xds.cache.set_snapshot(NODE, snapshot({1: (HTTPRule(method="POST"),)}))
    fixed = await client.recv()
    assert client.names(fixed) == ["l7gate-http-1"]
    assert fixed.resources[0].version != bad.resources[0].version
