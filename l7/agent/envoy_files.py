"""A node's Envoy as files and a process: where its files live, its PID record (PID + start time +
config, so a recycled PID is never mistaken for it), and which ports it listens on."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from l7 import procs
from l7xds.errors import XdsError

STOP_TIMEOUT = 5.0


def listening_ports(pid: int | str = "self", ipv6: bool = True) -> set[tuple[str, int]]:
    """(family, port) of every TCP socket in LISTEN state in the network namespace of process ``pid``."""
    out: set[tuple[str, int]] = set()
    for family, path in (("4", f"/proc/{pid}/net/tcp"), ("6", f"/proc/{pid}/net/tcp6")):
        if family == "6" and not ipv6:
            continue
        with contextlib.suppress(OSError), open(path) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":
                    out.add((family, int(fields[1].rsplit(":", 1)[1], 16)))
    return out


@dataclass(frozen=True)
class EnvoyPaths:
    """Where one node's Envoy keeps its files (several nodes share a lab's state directory)."""

    state_dir: Path
    node: str

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"envoy-{self.node}.pid"

    @property
    def workdir(self) -> Path:
        return self.state_dir / f"envoy-{self.node}"

    @property
    def config(self) -> Path:
        return self.workdir / "bootstrap.yaml"

    @property
    def xds_address(self) -> str:
        return f"unix:{self.state_dir / f'xds-{self.node}.sock'}"

    @property
    def admin_address(self) -> str:
        return f"unix:{self.state_dir / f'envoy-{self.node}-admin.sock'}"

    @property
    def access_log(self) -> Path:
        return self.state_dir / f"flows-{self.node}-http.jsonl"

    @property
    def secrets(self) -> Path:
        """Values of the Secrets ``headerMatches`` refer to (see :mod:`l7.agent.secrets`)."""
        return self.state_dir / "secrets"


@dataclass(frozen=True)
class EnvoyRecord:
    """An Envoy process by PID and start time (a recycled PID is never mistaken for it), and its config:
    what a later agent adopts (see :mod:`l7.procs`)."""

    pid: int
    start_time: int
    config: str

    @classmethod
    def of(cls, process: procs.Process, config: Path) -> EnvoyRecord:
        return cls(process.pid, process.start_time, str(config))

    @property
    def process(self) -> procs.Process:
        return procs.Process(self.pid, self.start_time)

    def alive(self) -> bool:
        argv = self.process.cmdline()  # [] unless this very process is running
        return bool(argv) and Path(argv[0]).name == "envoy" and self.config in argv

    def dump(self) -> str:
        return json.dumps({"pid": self.pid, "start_time": self.start_time, "config": self.config}) + "\n"

    @classmethod
    def load(cls, path: Path) -> EnvoyRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["start_time"]), str(data["config"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM, SIGKILL at the deadline; ``True`` if it was running. Signals only this process (and
        its process group, which it leads)."""
        if not self.alive():
            return False
        try:
            return self.process.stop(timeout)
        except procs.ProcessError as exc:
            raise XdsError(f"Envoy (pid {self.pid}) did not stop") from exc
