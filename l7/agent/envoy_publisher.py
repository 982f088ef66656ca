"""The node's xDS server and what it publishes: HTTP rule sets per proxy port ─► Translator (memoised)
─► snapshot ─► published on the server's loop ─► wait (bounded) until Envoy ACKed it and listens.

- The xDS server runs on its own asyncio loop in a thread and listens on ``unix:<state>/xds-<node>.sock``.
- A NACK is logged (by the stream) with type, resource names, nonce and error; Envoy keeps its previous
  configuration and the rejected version is not resent. :meth:`EnvoyPublisher.status` reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from l7.agent.envoy_files import listening_ports
from l7.agent.histogram import CONVERGENCE_BUCKETS, Histogram
from l7xds import resources as rt
from l7xds.cache import SnapshotCache
from l7xds.errors import XdsError
from l7xds.observer import AckEvent, NackEvent, XdsStats
from l7xds.server import XdsServer
from l7xds.snapshot import Snapshot
from l7xds.tls import PortTLS
from l7xds.translate import ProxySettings, RuleSet, Translator

log = logging.getLogger("l7gate.agent.envoy")
T = TypeVar("T")

FIRST_ACK_TIMEOUT = 15.0  # Envoy was just started: its start plus the first fetch
ACK_TIMEOUT = 2.0


async def _cancel_tasks() -> None:
    """Cancel what is left on the loop (stream handlers) so closing it does not interrupt them."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class XdsObserver(XdsStats):
    """Counts ACKs/NACKs (on the server loop) and wakes whoever waits for one."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def on_ack(self, event: AckEvent) -> None:
        with self.changed:
            super().on_ack(event)
            self.changed.notify_all()

    def on_nack(self, event: NackEvent) -> None:
        # the stream logged it (type, version, nonce, resources, error)
        with self.changed:
            super().on_nack(event)
            self.changed.notify_all()


class EnvoyPublisher:
    """The xDS server of one node on its event loop thread, and the snapshots published to its Envoy.

    ``netns`` gives a process in Envoy's network namespace (whose listening sockets are checked)."""

    def __init__(self, netns: Callable[[], int | str] = lambda: "self") -> None:
        self.node_id = ""  # set by start
        self._netns = netns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: XdsServer | None = None
        self.cache = SnapshotCache()
        self.stats = XdsObserver()
        self._translator = Translator()
        self.snapshot: Snapshot | None = None  # published last
        self.pushes = 0
        self.convergence_seconds: float | None = None  # last publish: change → Envoy ACKed and listening
        self.convergence = Histogram(CONVERGENCE_BUCKETS)  # every pushed change → ACKed and listening
        self.errors: list[str] = []
        self.acked_once = False

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self, node_id: str, xds_address: str) -> None:
        """Serve xDS for ``node_id`` at ``xds_address`` (``unix:<path>``) on a new event loop thread."""
        self.node_id = node_id
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="xds-server", daemon=True)
        self._thread.start()
        socket_path = Path(xds_address.removeprefix("unix:"))
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # left by a previous agent of this node
        self._server = XdsServer(self.cache, self.stats)
        self._run(self._server.start(xds_address))

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def close(self) -> None:
        """Stop the xDS server and its loop."""
        if self._loop is not None:
            if self._server is not None:
                with contextlib.suppress(Exception):
                    self._run(self._server.stop(0))
                    self._run(_cancel_tasks())
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            self._loop.close()
            self._loop = None

    # --------------------------------------------------------------------------------------- publish
    def publish(
        self,
        ports: Mapping[int, RuleSet],
        settings: ProxySettings,
        timeout: float | None = None,
        *,
        deny: AbstractSet[int] = frozenset(),
        wait_for: AbstractSet[int] | None = None,
        audit: AbstractSet[int] = frozenset(),
        adopted: bool = False,
        tls: Mapping[int, PortTLS] | None = None,
    ) -> bool:
        """Build, publish and wait (bounded) until Envoy ACKed it and listens on every port. Returns
        ``False`` (after logging why) when the snapshot could not be built or was not confirmed in time;
        the previous snapshot then stays published if this one could not be built. ``adopted``: Envoy
        was adopted and may not have connected yet (see below)."""
        nacks_before = self.stats.nacks
        started = time.monotonic()
        try:
            snapshot = self._translator.snapshot(ports, settings, deny, audit, tls)
        except XdsError as exc:
            self.error(f"HTTP rules not translated (the previous configuration stays): {exc}")
            return False

        async def set_snapshot() -> None:
            self.cache.set_snapshot(self.node_id, snapshot)

        pushed = not snapshot.same_as(self.snapshot)
        if pushed:  # else e.g. a re-apply for a DNS answer: nothing to push
            try:
                self._run(set_snapshot())
            except XdsError as exc:
                self.error(f"snapshot not published (the previous one stays): {exc}")
                return False
            self.snapshot = snapshot
            self.pushes += 1
        if timeout is None:
            timeout = ACK_TIMEOUT if self.acked_once else FIRST_ACK_TIMEOUT
        listen = set(ports if wait_for is None else wait_for)
        # An adopted Envoy may still be talking to the previous agent (a graceful restart) and only
        # reconnect here once that one stops: what the datapath needs first is its listeners, which it
        # kept; the snapshot reaches it when it reconnects.
        ack = not (adopted and not self.acked_once)
        ok = self.wait_applied(snapshot, listen, timeout, nacks_before, ack=ack)
        if ok and ack:
            self.convergence_seconds = round(time.monotonic() - started, 4)  # build → ACKed and listening
            if pushed:
                self.convergence.observe(time.monotonic() - started)  # (metrics)
        self.acked_once = self.acked_once or ok
        return ok

    def error(self, message: str) -> None:
        log.error("%s", message)
        self.errors = [*self.errors[-9:], message]

    def applied(self, snapshot: Snapshot, ports: set[int], ack: bool = True) -> bool:
        """Envoy ACKed the snapshot's clusters, listeners and routes (unless not ``ack``), and every
        port listens."""
        acked = self.stats.acked
        for type_url in (rt.CLUSTER, rt.LISTENER, rt.ROUTE) if ack else ():
            if acked.get((self.node_id, type_url)) != snapshot.version(type_url):
                if type_url == rt.ROUTE and not snapshot.resources(rt.ROUTE):
                    continue  # nothing to subscribe to: Envoy may never ask
                return False
        if not ports:
            return True
        listening = {port for family, port in listening_ports(self._netns(), ipv6=False) if family == "4"}
        return ports <= listening

    def rejected(self, snapshot: Snapshot, nacks_before: int) -> NackEvent | None:
        """A NACK (since ``nacks_before``) of a version of ``snapshot``."""
        if self.stats.nacks == nacks_before:
            return None
        for (node, type_url), event in self.stats.last_nack.items():
            if node == self.node_id and event.version == snapshot.version(type_url):
                return event
        return None

    def wait_applied(
        self,
        snapshot: Snapshot,
        ports: set[int],
        timeout: float,
        nacks_before: int | None = None,
        *,
        ack: bool = True,
    ) -> bool:
        """Wait until :meth:`applied`; ``False`` on timeout or when Envoy NACKed part of it."""
        deadline = time.monotonic() + timeout
        with self.stats.changed:
            while not self.applied(snapshot, ports, ack):
                if nacks_before is not None and self.rejected(snapshot, nacks_before) is not None:
                    self.error("Envoy rejected the new configuration; it keeps enforcing the previous one")
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "Envoy did not confirm the configuration within %.1f s (proxy ports %s); "
                        "redirects to new ports fail closed until it listens",
                        timeout,
                        sorted(ports),
                    )
                    return False
                self.stats.changed.wait(min(left, 0.02))  # the listen check needs polling
        return True

    # ---------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Pushes, ACKed versions, ACK/NACK counts, convergence, the last NACK, the rejection of the
        latest configuration, recent errors."""
        last_nack = None
        nacks = [e for (node, _), e in self.stats.last_nack.items() if node == self.node_id]
        if nacks:
            event = nacks[-1]
            last_nack = {
                "type": rt.short(event.type_url),
                "resources": list(event.resource_names),
                "nonce": event.nonce,
                "error": event.message,
            }
        return {
            "pushes": self.pushes,
            "acked": {
                rt.short(type_url): version
                for (node, type_url), version in sorted(self.stats.acked.items())
                if node == self.node_id
            },
            "acks": self.stats.acks,
            "nacks": self.stats.nacks,
            "convergence_seconds": self.convergence_seconds,
            "last_nack": last_nack,
            "rejected": self.rejected_now(),
            "errors": list(self.errors),
        }

    def rejected_now(self) -> dict[str, Any] | None:
        """The NACK of the configuration published last, while Envoy has not ACKed it (it enforces
        the previous one): type, resources and error; None when the latest configuration is fine."""
        snapshot, node = self.snapshot, self.node_id
        if snapshot is None:
            return None
        for (nack_node, type_url), event in self.stats.last_nack.items():
            version = snapshot.version(type_url)
            if (
                nack_node == node
                and event.version == version
                and self.stats.acked.get((node, type_url)) != version
            ):
                return {
                    "type": rt.short(type_url),
                    "resources": list(event.resource_names),
                    "error": event.message,
                }
        return None
