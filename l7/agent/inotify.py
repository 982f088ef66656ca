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
import struct
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
IN_Q_OVERFLOW = 0x4000
EVENT = struct.Struct("iIII")
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
        self._dirs_by_wd: dict[int, Path] = {}
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
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(d), MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOENT, errno.ENOTDIR):
                    raise WatchError(f"inotify_add_watch {d}: {os.strerror(err)}")
                continue
            self._dirs_by_wd[wd] = d

    def wait(self, timeout: float) -> set[Path] | None:
        """Block until something under the watched directories changed or ``timeout`` seconds passed.
        Returns the changed paths (empty: nothing happened), or None when events were lost (queue
        overflow: anything may have changed)."""
        if self._fd is None:
            return set()
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return set()
        changed: set[Path] | None = set()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            self.events += 1
            for path in self._parse(data):
                if path is None:
                    changed = None
                elif changed is not None:
                    changed.add(path)
        self.renew()
        return changed

    def _parse(self, data: bytes) -> Iterable[Path | None]:
        """``struct inotify_event`` records: (wd, mask, cookie, len, name[len])."""
        offset = 0
        while offset + EVENT.size <= len(data):
            wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
            name = data[offset + EVENT.size : offset + EVENT.size + length].rstrip(b"\0")
            offset += EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                yield None
                continue
            directory = self._dirs_by_wd.get(wd)
            if directory is None:
                continue
            yield directory / os.fsdecode(name) if name else directory

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
