"""``l7gate xds serve`` as a process, with a test ADS client: it serves the seed policy's listener and
routes for a node, and rebuilds the snapshot when the policy file changes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_pb2

from l7xds import resources as rt
from tests.xds.builders import NODE, AdsClient

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "deploy" / "examples" / "seeds" / "002-allow-public-from-prod.yaml"
ENDPOINTS = REPO / "deploy" / "endpoints" / "seed-002.yaml"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copyfile(SEED, policies / "seed.yaml")
    socket = tmp_path / "xds.sock"
    log = tmp_path / "serve.log"
    argv = [
        sys.executable,
        "-c",
        "from l7.cli import main; main()",
        "xds",
        "serve",
        "--listen",
        f"unix:{socket}",
        "--policies",
        str(policies),
        "--endpoints",
        str(ENDPOINTS),
        "--node",
        "k8s-w1",
        "--node-id",
        NODE,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while b"snapshot published" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"unix:{socket}", policies, log
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _routes(client: AdsClient, response: object) -> list[route_pb2.RouteConfiguration]:
    out = []
    for packed in response.resources:  # type: ignore[attr-defined]
        config = route_pb2.RouteConfiguration()
        packed.Unpack(config)
        out.append(config)
    return out


async def test_serves_the_node_policy_and_reloads(served: tuple[str, Path, Path]) -> None:
    address, policies, log = served
    client = AdsClient(address)
    try:
        await client.send(type_url=rt.CLUSTER)
        cds = await client.recv()
        assert client.names(cds) == ["l7gate-original-dst"]
        await client.ack(cds)
        await client.send(type_url=rt.LISTENER)
        lds = await client.recv()
        (listener,) = client.names(lds)
        await client.ack(lds)
        port = listener.removeprefix("l7gate-proxy-")
        await client.send(type_url=rt.ROUTE, resource_names=[f"l7gate-http-{port}"])
        rds = await client.recv()
        (config,) = _routes(client, rds)
        text = str(config)
        assert 'regex: "/public"' in text and 'regex: "GET"' in text, text
        await client.ack(rds, [f"l7gate-http-{port}"])

        # A rule edited in place keeps its proxy port (ports are keyed by where the rules are written):
        # only the route configuration changes, the listener stays (nothing drains).
        (policies / "seed.yaml").write_text(SEED.read_text().replace('path: "/public"', 'path: "/private"'))
        rds2 = await client.recv(timeout=10)
        assert rds2.type_url == rt.ROUTE, rds2.type_url
        (config2,) = _routes(client, rds2)
        assert config2.name == f"l7gate-http-{port}"
        assert 'regex: "/private"' in str(config2) and 'regex: "/public"' not in str(config2)
        await client.ack(rds2, [f"l7gate-http-{port}"])
    finally:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await client.close()
    assert log.read_text().count("snapshot published") == 2
