"""Wake the agent when its input files change (Linux inotify through libc), instead of polling.

The watched set is each input's parent directory (a file renamed into place, a symlink swapped) and,
for a directory input, the directory it resolves to with its subdirectories. :meth:`InputWatcher.wait`
returns as soon as an event arrives (or at the timeout); the agent then looks at its inputs. Watches
are renewed after every event, so a swapped symlink's new target is watched from then on.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
from collections.abc import Iterable
from pathlib import Path

from l7.errors import L7GateError

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)


class WatchError(L7GateError):
    """inotify is not available (the agent falls back to polling)."""


class InputWatcher:
    """See the module docstring."""

    def __init__(self, inputs: Iterable[Path]) -> None:
        self._inputs = list(inputs)
        name = ctypes.util.find_library("c")
        try:
            self._libc = ctypes.CDLL(name, use_errno=True)
            fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError) as exc:
            raise WatchError(f"inotify: {exc}") from exc
        if fd < 0:
            raise WatchError(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self._fd: int | None = fd
        self.events = 0
        self.renew()

    def _dirs(self) -> set[Path]:
        out: set[Path] = set()
        for path in self._inputs:
            out.add(path.parent)
            target = path.resolve()
            if target.is_dir():
                out.add(target)
                for root, dirs, _ in os.walk(target):
                    out.update(Path(root) / d for d in dirs)
            else:
                out.add(target.parent)
        return out

    def renew(self) -> None:
        """Watch what the inputs are now (adding a watch twice is harmless)."""
        if self._fd is None:
            return
        for d in self._dirs():
            if self._libc.inotify_add_watch(self._fd, os.fsencode(d), MASK) < 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOENT, errno.ENOTDIR):
                    raise WatchError(f"inotify_add_watch {d}: {os.strerror(err)}")

    def wait(self, timeout: float) -> bool:
        """Block until an input changed (True) or ``timeout`` seconds passed (False)."""
        if self._fd is None:
            return False
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            self.events += 1
        self.renew()
        return True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
