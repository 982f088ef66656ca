"""The backend of the adversarial HTTP suite: answers any method with what it received, and logs it.

Run inside the backend namespace: ``python adv_http_backend.py READY_FILE LOG_FILE``; it listens on
0.0.0.0:80 and writes READY_FILE once it accepts connections. Every request (any method) is answered
``200`` with one JSON line, and the same line is appended to LOG_FILE, so a test sees every request that
reached the backend (a smuggled request would show up there)::

    {"method": ..., "path": ..., "host": [...], "x-key": [...], "upgrade": [...], "body": ...}

Bodies are read by Content-Length or chunked framing (decoded), as Envoy forwards them.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from pathlib import Path
from typing import Any

LOCK = threading.Lock()
LOG: Path


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self) -> None:
        seen = {
            "method": self.command,
            "path": self.path,
            "host": self.headers.get_all("host") or [],
            "x-key": self.headers.get_all("x-key") or [],
            "upgrade": self.headers.get_all("upgrade") or [],
            "body": self._body().decode("latin-1"),
        }
        line = json.dumps(seen, sort_keys=True)
        with LOCK, LOG.open("a") as log:
            log.write(line + "\n")
        body = (line + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    LOG = Path(sys.argv[2])
    server = Server(("0.0.0.0", 80), Handler)
    Path(sys.argv[1]).write_text("ready")
    server.serve_forever()
