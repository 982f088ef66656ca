"""A tiny HTTP/1.1 backend for the Envoy tests: answers ``backend <path>`` for any GET/PUT/POST.

Run inside the backend namespace: ``python backend.py READY_FILE``; it listens on [::]:80 (dual stack)
and writes READY_FILE once it accepts connections.
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
        body = f"backend {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = _answer

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
