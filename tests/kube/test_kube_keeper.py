"""``l7gate socket-keeper``: the DNS socket keeper of the ``l7gate-dns-keeper`` DaemonSet, in the foreground.

It keeps sockets for the agent at ``<state-dir>/dns-sockets-<node>.sock`` (where the agent looks), the
agent reuses it instead of starting its own, ``--wait`` is the agent pod's init container, and a keeper
that finds another one answering waits for it instead of taking its socket path away.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from l7.agent.dns import keeper_path
from l7.agent.socket_keeper import KeeperClient, ensure_keeper

REPO = Path(__file__).resolve().parents[2]
NODE = "n1"


def l7gate(*argv: str) -> list[str]:
    return [sys.executable, "-m", "l7.cli", *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wait(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_for_keeper(state: Path, seconds: float) -> subprocess.CompletedProcess[str]:
    """``l7gate socket-keeper --wait``, the agent pod's init container."""
    argv = l7gate("socket-keeper", "--node", NODE, "--state-dir", str(state), "--wait", str(seconds))
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=30, check=False)


@contextmanager
def keeper(state: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        l7gate("socket-keeper", "--node", NODE, "--state-dir", str(state)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)


def test_the_keeper_serves_where_the_agent_looks_and_the_agent_reuses_it(tmp_path: Path) -> None:
    path = keeper_path(tmp_path, NODE)
    client = KeeperClient(path)
    waiting = wait_for_keeper(tmp_path, 0.3)
    assert waiting.returncode == 1 and "no socket keeper answers" in waiting.stderr
    with keeper(tmp_path) as proc:
        _wait("the keeper", lambda: client.alive() is not None)
        assert client.alive() == proc.pid
        assert ensure_keeper(path) == proc.pid  # the agent's call: it reuses the keeper, starts none
        init = wait_for_keeper(tmp_path, 5)
        assert init.returncode == 0 and f"pid {proc.pid}" in init.stdout
        # a socket handed over survives the process that made it (the agent restarting)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            client.put("dns-1", [udp])
        (kept,) = client.get("dns-1")
        with kept, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"query", ("127.0.0.1", port))
            kept.settimeout(5)
            assert kept.recv(100) == b"query"
    assert proc.returncode == 0, proc.stdout
    assert client.alive() is None and not path.exists()


def test_a_second_keeper_waits_for_the_first_to_go(tmp_path: Path) -> None:
    client = KeeperClient(keeper_path(tmp_path, NODE))
    with keeper(tmp_path) as first:
        _wait("the first keeper", lambda: client.alive() == first.pid)
        with keeper(tmp_path) as second:
            time.sleep(0.5)  # under test: the second keeper does not take the socket path meanwhile
            assert client.alive() == first.pid and second.poll() is None
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=10)
            _wait("the second keeper", lambda: client.alive() == second.pid)
