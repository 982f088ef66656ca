"""A real Envoy on our xDS server, for the tests that drive one directly (tests/xds, tests/security).

:func:`start_xds_envoy` starts the xDS server on its own event loop thread and Envoy in a network
namespace, registering their teardown on the caller's ``ExitStack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from l7xds.bootstrap import bootstrap, render
from l7xds.cache import SnapshotCache
from l7xds.envoy_process import EnvoyAdmin, EnvoyProcess
from l7xds.observer import XdsStats
from l7xds.server import XdsServer

T = TypeVar("T")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def poll(what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class LoopThread:
    """The xDS server's event loop, in a thread (the tests themselves are synchronous)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="xds-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        # let grpc's poller hand over what the server's shutdown still completes (Envoy's streams
        # closing) before the loop goes: an event for a closed loop fails whichever test runs next
        self.run(asyncio.sleep(0.2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass(frozen=True)
class XdsEnvoy:
    loop: LoopThread
    cache: SnapshotCache
    stats: XdsStats
    envoy: EnvoyProcess
    admin: EnvoyAdmin


def start_xds_envoy(cleanup: contextlib.ExitStack, work: Path, node_id: str, netns: str) -> XdsEnvoy:
    """The xDS server on ``unix:<work>/xds.sock`` and Envoy (bootstrapped for ``node_id``) in ``netns``."""
    loop = LoopThread()
    cleanup.callback(loop.close)
    cache, stats = SnapshotCache(), XdsStats()
    server = XdsServer(cache, stats)
    address = loop.run(server.start(f"unix:{work}/xds.sock"))
    cleanup.callback(lambda: loop.run(server.stop(0)))
    config = work / "bootstrap.yaml"
    admin_address = f"unix:{work}/admin.sock"
    config.write_text(render(bootstrap(node_id=node_id, xds_address=address, admin_address=admin_address)))
    envoy = EnvoyProcess.start(config, work, argv_prefix=["nsenter", f"--net=/run/netns/{netns}"])
    cleanup.callback(envoy.stop)
    admin = EnvoyAdmin(admin_address)
    cleanup.callback(admin.close)
    return XdsEnvoy(loop, cache, stats, envoy, admin)
