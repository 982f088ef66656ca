"""Test-wide rules.

- Tests marked ``root`` need root and the kernel; without them they fail, never skip.
- Nothing is left running and nothing is left a zombie: at the end of the session every child of the
  test process has exited and been reaped (:mod:`l7.procs` reaps what it started; a
  :class:`subprocess.Popen` must be waited for), and no Popen is left to warn "subprocess N is still
  running" (``filterwarnings = error`` makes a ResourceWarning a failure inside a test; this check
  catches those that would only warn when collected after the last test).
"""

from __future__ import annotations

import gc
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from l7 import procs

LEFT_TIMEOUT = 5.0  # a child stopped by the last teardown may take a moment to exit


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, tc, BPF); CI runs as root", pytrace=False)


def children(ppid: int) -> list[tuple[int, str, str]]:
    """``(pid, state, command)`` of every process whose parent is ``ppid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == ppid:
            out.append((int(entry.name), fields[0], text[text.index("(") + 1 : text.rindex(")")]))
    return out


def _unwaited() -> list[str]:
    """Popens nobody waited for: each would warn "subprocess N is still running" when collected."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()  # one nobody references any more warns now, not at interpreter exit
        popens = [o for o in gc.get_objects() if isinstance(o, subprocess.Popen) and o.returncode is None]
    for popen in popens:
        popen.poll()  # reaped, if it has exited: reported once
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] + [
        f"subprocess {p.pid} was never waited for: {p.args!r}" for p in popens
    ]


def _children_left() -> list[str]:
    procs.reap()  # what l7.procs started is reaped once it exited
    return [
        f"child {pid} ({command}) left {'a zombie' if state == 'Z' else 'running'}"
        for pid, state, command in children(os.getpid())
    ]


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Fail the session if a test left a child running, a zombie, or a Popen that was never waited for."""
    yield
    unwaited = _unwaited()
    deadline = time.monotonic() + LEFT_TIMEOUT
    while (left := _children_left()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if unwaited or left:
        for process in procs.children():  # reported; stopped, so the next run starts clean
            process.stop()
        pytest.fail("processes left behind by the tests:\n  " + "\n  ".join(unwaited + left), pytrace=False)
