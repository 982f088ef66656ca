"""The socket keeper holds listening sockets while their user restarts: datagrams sent while nobody
serves the port queue up and are read by the next user of the same socket."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from l7.agent.socket_keeper import KeeperClient, KeeperError, ensure_keeper


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[KeeperClient]:
    path = tmp_path / "keeper.sock"
    pid = ensure_keeper(path, tmp_path / "keeper.log")
    client = KeeperClient(path)
    try:
        assert client.alive() == pid and ensure_keeper(path) == pid  # a second ensure adopts it
        yield client
    finally:
        client.stop()
        if client.alive() is not None:
            os.kill(pid, signal.SIGKILL)


def test_queued_datagrams_survive_the_user(keeper: KeeperClient) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    keeper.put("dns-udp", [sock])
    sock.close()  # the "agent" is gone; only the keeper holds the socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for i in range(50):
            client.sendto(f"q{i}".encode(), ("127.0.0.1", port))
    (back,) = keeper.get("dns-udp")
    with back:
        assert back.getsockname() == ("127.0.0.1", port)
        back.settimeout(1)
        got = [back.recv(100).decode() for _ in range(50)]
    assert got == [f"q{i}" for i in range(50)]
    keeper.drop("dns-udp")
    assert keeper.get("dns-udp") == []


def test_several_sockets_and_bad_requests(keeper: KeeperClient) -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        b.listen()
        keeper.put("k", [a, b])
        back = keeper.get("k")
        kinds = [s.type for s in back]
        for s in back:
            s.close()
    assert kinds == [socket.SOCK_DGRAM, socket.SOCK_STREAM]
    with pytest.raises(KeeperError):
        keeper.put("empty", [])
    assert keeper.get("missing") == []
