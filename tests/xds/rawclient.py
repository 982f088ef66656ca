"""Raw HTTP over one TCP connection, for what curl will not send (CONNECT, keep-alive across a pause).

``python rawclient.py HOST PORT`` reads requests from stdin, one per line as a Python string literal
(e.g. ``'GET /public HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'``), sends each on the same connection and prints
``STATUS <code> <body as a literal>`` after each response.
"""

from __future__ import annotations

import ast
import socket
import sys


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"connection closed: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body[:length]


def main() -> None:
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    for line in sys.stdin:
        sock.sendall(ast.literal_eval(line).encode("latin-1"))
        status, body = read_response(sock)
        print(f"STATUS {status} {body!r}", flush=True)


if __name__ == "__main__":
    main()
