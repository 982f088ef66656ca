"""The TLS backend of the adversarial TLS suite: one address serving two names, logging every connection.

Run inside the backend namespace: ``python adv_tls_backend.py READY_FILE LOG_FILE CERT_DIR``. It listens
on 0.0.0.0:443 and 0.0.0.0:8443 (TLS 1.2 and 1.3). ``CERT_DIR`` holds ``api.crt``/``api.key`` (for
``api.example.com``) and ``evil.crt``/``evil.key`` (``evil.example.net``, also the default certificate: the
shared server's default virtual host, what a ClientHello without a known name gets). Every accepted TCP
connection appends ``{"event": "accept", "port": P}`` to LOG_FILE *before* any TLS byte is read — so a
test sees whether Envoy forwarded a connection at all — then ``{"event": "request", "sni": ..., "path":
..., "host": ...}`` for each HTTP request, which is answered ``200`` with the same JSON.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

LOCK = threading.Lock()
SEEN = threading.local()  # the SNI of the handshake running in this thread


def log(path: Path, entry: dict[str, Any]) -> None:
    with LOCK, path.open("a") as out:
        out.write(json.dumps(entry) + "\n")


def contexts(certs: Path) -> tuple[ssl.SSLContext, dict[str, ssl.SSLContext]]:
    by_name = {}
    for short, name in (("api", "api.example.com"), ("evil", "evil.example.net")):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(certs / f"{short}.crt", certs / f"{short}.key")
        ctx.set_alpn_protocols(["http/1.1"])
        by_name[name] = ctx
    default = by_name["evil.example.net"]

    def pick(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        SEEN.sni = name
        if name is not None and name.lower().rstrip(".") in by_name:
            sock.context = by_name[name.lower().rstrip(".")]

    default.sni_callback = pick  # type: ignore[assignment]
    return default, by_name


def serve_one(conn: socket.socket, port: int, default: ssl.SSLContext, log_path: Path) -> None:
    log(log_path, {"event": "accept", "port": port})
    SEEN.sni = None
    try:
        tls = default.wrap_socket(conn, server_side=True)
    except (OSError, ssl.SSLError):
        conn.close()
        return
    sni = SEEN.sni
    with tls:
        reader = tls.makefile("rb")
        while True:
            try:
                line = reader.readline(65536)
            except (OSError, ssl.SSLError):
                return
            if not line:
                return
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else ""
            hosts = []
            while True:
                header = reader.readline(65536)
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "host":
                    hosts.append(value.strip())
            entry = {"event": "request", "port": port, "sni": sni, "path": path, "host": hosts}
            log(log_path, entry)
            body = json.dumps(entry).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n"
            try:
                tls.sendall(head.encode() + body)
            except OSError:
                return


def listen(port: int, default: ssl.SSLContext, log_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)

    def accept() -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=serve_one, args=(conn, port, default, log_path), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return sock


def main() -> None:
    ready, log_path, certs = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    default, _ = contexts(certs)
    socks = [listen(port, default, log_path) for port in (443, 8443)]
    ready.write_text("ready")
    threading.Event().wait()
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    main()
