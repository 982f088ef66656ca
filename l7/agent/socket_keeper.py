"""Keep listening sockets open while the process that serves them restarts.

The DNS proxy lives in the node agent. If its listening sockets died with the agent, every query sent
while the agent restarts would be lost (the datapath redirects to a port nobody listens on: it fails
closed). Instead a tiny keeper process holds a duplicate of each listening socket: the kernel keeps the
socket — and the queries queued in it — while the agent is gone, and the next agent takes the very same
sockets back and answers what queued up. Two agents can also serve the same sockets at once, so a
graceful restart (new agent up, then the old one stopped) has no pause at all.

Protocol: a unix stream socket at ``path``; one request per connection, a line of text, answered with a
line (and file descriptors with ``SCM_RIGHTS``)::

    GET key          → "OK n" + n fds   | "NONE"
    PUT key n + fds  → "OK"             (replaces what was stored under key)
    DROP key         → "OK"
    PING             → "OK pid"

The keeper never reads from the sockets; it exits when asked (``STOP``) or on SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from l7 import procs
from l7.errors import L7GateError

log = logging.getLogger("l7gate.socket_keeper")
MAX_FDS = 16


class KeeperError(L7GateError):
    pass


class KeeperClient:
    """Talks to the keeper at ``path``; every call opens its own short connection."""

    def __init__(self, path: Path, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout

    def _call(self, line: str, fds: list[int] | None = None) -> tuple[str, list[int]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.path))
                if fds:
                    socket.send_fds(s, [line.encode() + b"\n"], fds)
                else:
                    s.sendall(line.encode() + b"\n")
                data, got, _flags, _addr = socket.recv_fds(s, 256, MAX_FDS)
            except OSError as exc:
                raise KeeperError(f"socket keeper {self.path}: {exc}") from None
        return data.decode().strip(), list(got)

    def alive(self) -> int | None:
        """The keeper's PID, or None when no keeper answers."""
        try:
            reply, _ = self._call("PING")
        except KeeperError:
            return None
        return int(reply.split()[1]) if reply.startswith("OK ") else None

    def get(self, key: str) -> list[socket.socket]:
        """The sockets stored under ``key`` (new descriptors for the same sockets), or []."""
        reply, fds = self._call(f"GET {key}")
        for fd in fds:  # received without O_CLOEXEC: keep them out of the processes this one starts
            os.set_inheritable(fd, False)
        return [socket.socket(fileno=fd) for fd in fds] if reply.startswith("OK") else []

    def put(self, key: str, socks: list[socket.socket]) -> None:
        if not 0 < len(socks) <= MAX_FDS:
            raise KeeperError(f"put {key}: 1 to {MAX_FDS} sockets, not {len(socks)}")
        reply, _ = self._call(f"PUT {key} {len(socks)}", [s.fileno() for s in socks])
        if reply != "OK":
            raise KeeperError(f"put {key}: {reply}")

    def drop(self, key: str) -> None:
        self._call(f"DROP {key}")

    def stop(self) -> None:
        with contextlib.suppress(KeeperError):
            self._call("STOP")


def ensure_keeper(path: Path, log_path: Path | None = None, timeout: float = 5.0) -> int:
    """Start a keeper at ``path`` unless one answers there; return its PID. The keeper runs in its own
    session (:func:`l7.procs.spawn`: it outlives the agent, and the next agent finds it by its socket);
    its PID is also written to ``path`` + ``.pid``."""
    client = KeeperClient(path)
    pid = client.alive()
    if pid is not None:
        return pid
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    argv = [sys.executable, "-m", "l7.agent.socket_keeper", str(path)]
    try:
        process = procs.spawn(argv, stdout=log_path)
    except procs.ProcessError as exc:
        raise KeeperError(f"socket keeper: {exc}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = client.alive()
        if pid is not None:
            return pid
        if not process.alive():
            raise KeeperError(f"socket keeper exited with {process.returncode()}")
        time.sleep(0.01)
    process.stop()
    raise KeeperError(f"socket keeper at {path} did not answer within {timeout}s")


def serve(path: Path) -> None:
    """The keeper's loop (``python -m l7.agent.socket_keeper PATH``)."""
    held: dict[str, list[socket.socket]] = {}
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(16)
    pid_file = Path(str(path) + ".pid")
    pid_file.write_text(str(os.getpid()))
    running = True

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal running
        running = False
        server.close()

    signal.signal(signal.SIGTERM, on_term)
    while running:
        try:
            conn, _ = server.accept()
        except OSError:
            break
        with conn:
            try:
                conn.settimeout(2.0)
                data, fds, _flags, _addr = socket.recv_fds(conn, 256, MAX_FDS)
                words = data.decode().split()
                reply, send = _handle(words, fds, held)
                if send:
                    socket.send_fds(conn, [reply.encode() + b"\n"], [s.fileno() for s in send])
                else:
                    conn.sendall(reply.encode() + b"\n")
                if words[:1] == ["STOP"]:
                    running = False
            except (OSError, ValueError, IndexError) as exc:
                log.warning("bad request: %s", exc)
    for socks in held.values():
        for s in socks:
            s.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()


def _handle(
    words: list[str], fds: list[int], held: dict[str, list[socket.socket]]
) -> tuple[str, list[socket.socket]]:
    received = [socket.socket(fileno=fd) for fd in fds]
    command = words[0] if words else ""
    if command in {"PING", "STOP"}:
        return f"OK {os.getpid()}", []
    if command == "GET" and len(words) == 2:
        socks = held.get(words[1], [])
        return (f"OK {len(socks)}", socks) if socks else ("NONE", [])
    if command == "PUT" and len(words) == 3 and int(words[2]) == len(received) > 0:
        for s in held.pop(words[1], []):
            s.close()
        held[words[1]] = received
        return "OK", []
    if command == "DROP" and len(words) == 2:
        for s in held.pop(words[1], []):
            s.close()
        return "OK", []
    for s in received:
        s.close()
    return "ERR bad request", []


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s socket-keeper %(levelname)s %(message)s")
    serve(Path(sys.argv[1]))
