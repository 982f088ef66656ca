"""l7.procs: start in a new session, identity by PID + start time, stop (the group), reap."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from l7 import procs


def poll(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_spawn_stop_and_reap(tmp_path: Path) -> None:
    process = procs.spawn(["sleep", "30"])
    try:
        assert process.alive() and process in procs.children()
        assert process == procs.Process.of(process.pid)  # adopting by PID finds the same identity
        deadline = time.monotonic() + 5  # /proc may show the argv a moment after the start on a busy machine
        while process.cmdline() != ["sleep", "30"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.cmdline() == ["sleep", "30"]
        assert os.getsid(process.pid) == process.pid  # its own session: outlives its starter
        assert process.returncode() is None
    finally:
        assert process.stop()
    assert not process.alive() and process not in procs.children()
    assert process.returncode() == -signal.SIGTERM
    assert not Path(f"/proc/{process.pid}").exists()  # reaped, not a zombie
    assert not process.stop()  # stopping what is gone: nothing to do


def test_an_exited_child_is_reaped_and_its_status_kept() -> None:
    process = procs.spawn(["sh", "-c", "exit 3"])
    assert process.wait(5)
    assert process.returncode() == 3
    assert procs.start_time(process.pid) is None and procs.Process.of(process.pid) is None


def test_another_start_time_is_another_process() -> None:
    """A recycled PID: the record's start time differs, so it is neither alive nor signalled."""
    process = procs.spawn(["sleep", "30"])
    try:
        stranger = procs.Process(process.pid, process.start_time + 1)
        assert not stranger.alive() and stranger.cmdline() == []
        assert not stranger.stop() and not stranger.signal(signal.SIGKILL)
        assert process.alive()
    finally:
        process.stop()


def test_output_files_and_no_inherited_descriptors(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.set_inheritable(write, True)  # e.g. a descriptor received with SCM_RIGHTS
    try:
        script = f"echo out; echo err >&2; test -e /proc/self/fd/{write} && echo inherited || echo closed"
        both = procs.spawn(["sh", "-c", script], stdout=tmp_path / "logs" / "both.log")
        split = procs.spawn(["sh", "-c", script], stdout=tmp_path / "out.log", stderr=tmp_path / "err.log")
        assert both.wait(5) and split.wait(5)
    finally:
        os.close(read)
        os.close(write)
    assert (tmp_path / "logs" / "both.log").read_text().split() == ["out", "err", "closed"]
    assert (tmp_path / "out.log").read_text().split() == ["out", "closed"]
    assert (tmp_path / "err.log").read_text().split() == ["err"]


def test_stop_signals_the_process_group(tmp_path: Path) -> None:
    log = tmp_path / "sh.log"
    shell = procs.spawn(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=log)
    poll("the shell's child", lambda: log.read_text().strip() != "")
    child = procs.Process.of(int(log.read_text()))
    assert child is not None and child.alive()
    assert shell.stop()
    poll("the group's other member to go", lambda: not child.alive())


def test_a_command_that_cannot_start() -> None:
    with pytest.raises(procs.ProcessError, match="cannot start"):
        procs.spawn(["/nonexistent/l7gate-test-binary"])
    with pytest.raises(procs.ProcessError):
        procs.spawn([])
