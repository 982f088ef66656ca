"""The backend of the HTTP findings tests: answers any method with what it saw.

Run inside the backend namespace: ``python http_backend.py READY_FILE``; it listens on [::]:80 (dual stack)
and writes READY_FILE once it accepts connections. The body of every answer is one line::

    backend <METHOD> <path> x-token=<every X-Token value, in order, joined by |>

A request with ``Upgrade: websocket`` gets ``101 Switching Protocols``; the connection then echoes every
byte back (a stand-in for a WebSocket server: the tests only check that bytes flow both ways).
"""

from __future__ import annotations

import http.server
import socket
import sys
from pathlib import Path


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if (self.headers.get("upgrade") or "").lower() == "websocket":
            self._websocket()
            return
        tokens = "|".join(self.headers.get_all("x-token") or [])
        body = f"backend {self.command} {self.path} x-token={tokens}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _websocket(self) -> None:
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.connection.settimeout(10)
        try:
            while chunk := self.connection.recv(65536):
                self.connection.sendall(chunk)
        except OSError:
            pass

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


if __name__ == "__main__":
    server = Server(("::", 80), Handler)
    Path(sys.argv[1]).write_text("ready")
    server.serve_forever()
