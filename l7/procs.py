"""Process supervision: start, adopt, stop and reap the long-running processes l7gate runs.

Every process l7gate keeps running — the lab's servers and agents, a node's Envoy, the socket keeper —
is started and stopped here, and nowhere else::

    spawn(argv) ──► Process(pid, start_time) ──► recorded (lab state, Envoy's PID file, ...)
                          │                               │ a later process: Process(pid, start_time)
                          ▼                               ▼
                   alive() / stop() / returncode()   adopt: alive() is true only for the very process

- **Identity.** A process is its PID *and* its start time (``/proc/PID/stat`` field 22, clock ticks
  since boot), so a recycled PID is never mistaken for it or signalled. A zombie is not alive.
- **Start.** :func:`spawn` uses ``posix_spawn`` in a new session (``setsid``): the process outlives its
  starter and a signal to the starter's process group does not reach it. stdin is ``/dev/null``,
  stdout/stderr go to files (appended) or ``/dev/null``, and every inheritable descriptor above 2 is
  closed in the child (``close_fds``). No :class:`subprocess.Popen` object exists for it, so nothing
  warns ("subprocess N is still running") when it deliberately outlives its starter — Envoy and the
  socket keeper outlive the agent, lab servers outlive ``l7gate lab up``.
- **Reap.** The starter remains the parent until it exits (then the process is re-parented to init,
  which reaps it). While it runs, an exited child is a zombie until waited for: :func:`reap` waits
  (``WNOHANG``) for every child started here and keeps its exit status. It never waits for PIDs it did
  not start (``waitpid(-1)`` would steal the status of other code's subprocesses). Every function of
  this module reaps first, so a supervisor that polls :meth:`Process.alive` reaps as it goes.
- **Stop.** :meth:`Process.stop`: SIGTERM, SIGKILL at the deadline, then wait until it is gone (and
  reaped, when it is our child). A process that leads its own process group (everything :func:`spawn`
  starts) is signalled as a group, which includes its own children; anything else only by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from l7.errors import L7GateError

POLL = 0.01  # seconds between looks while waiting for a process to go
_EXITED_KEPT = 256  # exit statuses remembered (the most recent ones)


class ProcessError(L7GateError):
    """A process could not be started, or did not stop."""


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, start_time)`` of process ``pid`` from ``/proc/PID/stat``, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone (ENOENT, ESRCH)
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces and ")"
    return fields[0], int(fields[19])


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None if there is no such process or a zombie."""
    reap()
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    return stat[1]


@dataclass(frozen=True)
class Process:
    """One process, by PID and start time: :meth:`alive` and :meth:`stop` concern only that process,
    never another one that got its PID later. Build one from a record to adopt a process a previous
    starter left running."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> Process | None:
        """The process running as ``pid`` now (None if none, or a zombie)."""
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        """Running (not exited, not a zombie) and still the same process."""
        return start_time(self.pid) == self.start_time

    def cmdline(self) -> list[str]:
        """Its argv ([] when it is gone or not this process any more)."""
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return []
        return raw.decode(errors="replace").split("\0")[:-1] if self.alive() else []

    def returncode(self) -> int | None:
        """Its exit status once it exited, when this process started it (negative: killed by that
        signal, as :attr:`subprocess.Popen.returncode`); None while it runs or when unknown."""
        reap()
        with _lock:
            return _exited.get(self)

    def signal(self, sig: int) -> bool:
        """Send ``sig`` (to its process group when it leads one); ``False`` if it is not running."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        return True

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until it is gone (reaped, when it is our child)."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """SIGTERM, SIGKILL after ``timeout``; ``True`` if it was running. Raises :class:`ProcessError`
        if it survives SIGKILL for ``timeout`` (e.g. stuck in the kernel)."""
        if not self.signal(signal.SIGTERM):
            return False
        if self.wait(timeout):
            return True
        self.signal(signal.SIGKILL)
        if self.wait(timeout):
            return True
        raise ProcessError(f"process {self.pid} did not stop")


# ------------------------------------------------------------------------------------- children
_lock = threading.Lock()
_children: dict[int, Process] = {}  # started here and not reaped yet, by PID
_exited: dict[Process, int] = {}  # started here and reaped: exit status (the most recent ones)

Output = Path | None  # a file (appended to, created 0644) or None for /dev/null


def spawn(
    argv: Sequence[str],
    *,
    stdout: Output = None,
    stderr: Output | Literal["stdout"] = "stdout",
    env: Mapping[str, str] | None = None,
) -> Process:
    """Start ``argv`` in a new session (see the module docstring); ``argv[0]`` is looked up in PATH
    unless it contains a ``/``. Raises :class:`ProcessError` when it cannot be started."""
    if not argv:
        raise ProcessError("nothing to start: empty argv")
    append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(stdout) if stdout else os.devnull, append, 0o644),
    ]
    if stderr == "stdout":
        actions.append((os.POSIX_SPAWN_DUP2, 1, 2))
    else:
        actions.append((os.POSIX_SPAWN_OPEN, 2, str(stderr) if stderr else os.devnull, append, 0o644))
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds()]
    for path in (stdout, stderr):
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
    run = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
    environ = os.environ if env is None else env
    with _lock:  # no reap() between the start and the registration
        try:
            pid = run(argv[0], list(argv), environ, file_actions=actions, setsid=True)
        except OSError as exc:
            raise ProcessError(f"cannot start {argv[0]}: {exc}") from exc
        stat = _stat(pid)  # a zombie already, if it exited at once: its start time is still there
        process = Process(pid, stat[1] if stat is not None else 0)
        _children[pid] = process
    return process


def _inheritable_fds() -> list[int]:
    """Descriptors above 2 a spawned process would inherit (Python's own are not inheritable, but
    e.g. descriptors received with SCM_RIGHTS are)."""
    fds = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
                if fd > 2 and os.get_inheritable(fd):
                    fds.append(fd)
    return fds


def reap() -> None:
    """Wait (without blocking) for every exited child started here; keep their exit statuses."""
    with _lock:
        for pid, process in list(_children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # someone else waited for it: gone, status unknown
                del _children[pid]
                continue
            if done:
                del _children[pid]
                _exited[process] = os.waitstatus_to_exitcode(status)
                while len(_exited) > _EXITED_KEPT:
                    del _exited[next(iter(_exited))]


def children() -> list[Process]:
    """The children started here that have not exited (or not been reaped: see :func:`reap`)."""
    reap()
    with _lock:
        return list(_children.values())
