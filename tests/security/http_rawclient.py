"""Send raw bytes over one TCP connection and print everything that comes back.

``python http_rawclient.py HOST PORT IDLE_S [SECOND_IDLE_S]`` reads the bytes to send from stdin (as they
are), sends them at once, and reads until the peer closes or nothing arrived for IDLE_S seconds. With
SECOND_IDLE_S it then sends ``ping`` and reads again (a WebSocket stand-in: the bytes of the tunnel).
Prints one JSON object: ``{"data": base64, "closed": bool, "second": base64}``; ``closed`` is whether the
peer closed the connection.
"""

from __future__ import annotations

import base64
import json
import socket
import sys


def read(sock: socket.socket, idle: float) -> tuple[bytes, bool]:
    sock.settimeout(idle)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def main() -> None:
    host, port, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    payload = sys.stdin.buffer.read()
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(payload)
    data, closed = read(sock, idle)
    second = b""
    if len(sys.argv) > 4 and not closed:
        sock.sendall(b"ping")
        second, closed = read(sock, float(sys.argv[4]))
    sock.close()
    print(
        json.dumps(
            {
                "data": base64.b64encode(data).decode(),
                "closed": closed,
                "second": base64.b64encode(second).decode(),
            }
        )
    )


if __name__ == "__main__":
    main()
