"""The lab's processes as records in its state file: a name, the namespace, the log and the process
(PID *and* start time, see :mod:`l7.procs`), so ``lab down`` — in any later process — stops exactly
those and never a process that got a recorded PID later. Starting, stopping and reaping is
:mod:`l7.procs`'s; this module only names and records."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

import l7
from l7 import procs as supervisor
from l7.lab.errors import LabError


class ProcRecord(BaseModel):
    """A process the lab started: enough to find it again (and only it) after the starter has exited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    netns: str
    argv: list[str]
    pid: int
    start_time: int  # /proc/PID/stat field 22, in clock ticks since boot
    log: str

    @property
    def process(self) -> supervisor.Process:
        return supervisor.Process(self.pid, self.start_time)


def alive(rec: ProcRecord) -> bool:
    return rec.process.alive()


def start(name: str, netns: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> ProcRecord:
    """Start ``argv`` inside ``netns`` in a new session.

    ``ip netns exec`` execs the command (same PID) and bind-mounts the pod's /etc/netns files."""
    return launch(name, netns, ["ip", "netns", "exec", netns, *argv], log, env)


def launch(
    name: str, netns: str, full: list[str], log: Path, env: dict[str, str] | None = None
) -> ProcRecord:
    """Start ``full`` (which enters ``netns`` itself) in a new session, output to ``log``, and record it."""
    try:
        process = supervisor.spawn(full, stdout=log, env=env)
    except supervisor.ProcessError as exc:
        raise LabError(f"cannot start {name} in {netns}: {exc}") from exc
    return ProcRecord(
        name=name, netns=netns, argv=full, pid=process.pid, start_time=process.start_time, log=str(log)
    )


def stop(rec: ProcRecord, timeout: float = 3.0) -> bool:
    """Stop a recorded process and its process group (SIGTERM, then SIGKILL at the deadline); ``True``
    if it was running."""
    try:
        return rec.process.stop(timeout)
    except supervisor.ProcessError as exc:
        raise LabError(f"process {rec.name} (pid {rec.pid}) did not stop: {exc}") from exc


def tail(rec: ProcRecord, lines: int = 10) -> str:
    try:
        return "\n".join(Path(rec.log).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def lab_env() -> dict[str, str]:
    """The environment of the lab's processes: this checkout first on the path, unbuffered output."""
    root = str(Path(l7.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env
