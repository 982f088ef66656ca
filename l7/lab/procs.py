"""Process supervision: start long-running processes inside a namespace, in their own session, and stop
exactly those — by recorded PID *and* start time, so a recycled PID is never signalled."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from l7.lab.errors import LabError

# Children started by this process, kept so they are reaped (never left as zombies or unawaited Popens).
_children: dict[int, subprocess.Popen[bytes]] = {}


class ProcRecord(BaseModel):
    """A process the lab started: enough to find it again (and only it) after the starter has exited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    netns: str
    argv: list[str]
    pid: int
    start_time: int  # /proc/PID/stat field 22, in clock ticks since boot
    log: str


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, start_time)`` of a process, or ``None`` if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def alive(rec: ProcRecord) -> bool:
    _reap(rec.pid)
    stat = _stat(rec.pid)
    return stat is not None and stat[1] == rec.start_time and stat[0] not in ("Z", "X")


def start(name: str, netns: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> ProcRecord:
    """Start ``argv`` inside ``netns`` in a new session.

    ``ip netns exec`` execs the command (same PID) and bind-mounts the pod's /etc/netns files."""
    return launch(name, netns, ["ip", "netns", "exec", netns, *argv], log, env)


def launch(
    name: str, netns: str, full: list[str], log: Path, env: dict[str, str] | None = None
) -> ProcRecord:
    """Start ``full`` (which enters ``netns`` itself) in a new session, output to ``log``, and record it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        except OSError as exc:
            raise LabError(f"cannot start {name} in {netns}: {exc}") from exc
    _children[proc.pid] = proc
    stat = _stat(proc.pid)
    return ProcRecord(
        name=name, netns=netns, argv=full, pid=proc.pid, start_time=stat[1] if stat else 0, log=str(log)
    )


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def _signal(rec: ProcRecord, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        # The recorded process leads its own session and group (setsid): signal the group, which is the
        # process and its own children; anything else is left alone.
        if os.getpgid(rec.pid) == rec.pid:
            os.killpg(rec.pid, sig)
        else:
            os.kill(rec.pid, sig)


def stop(rec: ProcRecord, timeout: float = 3.0) -> bool:
    """Stop a recorded process (SIGTERM, then SIGKILL at the deadline); ``True`` if it was running."""
    _reap(rec.pid)
    if not alive(rec):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal(rec, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(rec.pid)
            if not alive(rec):
                return True
            time.sleep(0.01)
    raise LabError(f"process {rec.name} (pid {rec.pid}) did not stop")


def tail(rec: ProcRecord, lines: int = 10) -> str:
    try:
        return "\n".join(Path(rec.log).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
