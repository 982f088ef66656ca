"""The client of the adversarial TLS suite, run inside the client namespace.

``python adv_tls_client.py`` reads one JSON command from stdin and prints one JSON result:

- ``{"mode": "raw", "host", "port", "chunks": [base64, ...], "idle"}``: sends each chunk in its own TCP
  segment (TCP_NODELAY, 50 ms apart), then reads until the peer closes or nothing came for ``idle`` s.
  Result: ``{"data": base64, "closed": bool}``.
- ``{"mode": "tls", "host", "port", "sni", "cafile", "requests": [raw HTTP text, ...], "version",
  "alpn", "session_from"}``: a real TLS client (Python's ssl) — ``version`` "1.2" or "1.3" pins it,
  ``alpn`` is offered — that sends each request on the connection and reads one response each.
  With ``resume_with`` (TLS 1.2), a second connection offers the first one's session with that SNI.
  Result: ``{"handshake": bool, "error", "alpn", "responses": [[status, body], ...], "resumed"}``.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import sys
import time
from typing import Any


def read(sock: socket.socket, idle: float) -> tuple[bytes, bool]:
    sock.settimeout(idle)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def raw(cmd: dict[str, Any]) -> dict[str, Any]:
    sock = socket.create_connection((cmd["host"], cmd["port"]), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    closed = False
    try:
        for i, chunk in enumerate(cmd["chunks"]):
            if i:
                time.sleep(0.05)  # its own segment (not a synchronisation)
            sock.sendall(base64.b64decode(chunk))
    except OSError:
        closed = True
    data, closed2 = read(sock, cmd.get("idle", 1.0))
    sock.close()
    return {"data": base64.b64encode(data).decode(), "closed": closed or closed2}


def response(reader: Any) -> tuple[int, str]:
    status = reader.readline()
    if not status:
        raise ConnectionError("closed before a response")
    code = int(status.split()[1])
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return code, reader.read(length).decode("latin-1")


def tls(
    cmd: dict[str, Any], session: ssl.SSLSession | None = None, reuse: ssl.SSLContext | None = None
) -> dict[str, Any]:
    ctx = reuse or ssl.create_default_context(cafile=cmd["cafile"])
    ctx.check_hostname = False  # the test checks what it wants; the name sent is cmd["sni"]
    if cmd.get("version") == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif cmd.get("version") == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cmd.get("alpn"):
        ctx.set_alpn_protocols(cmd["alpn"])
    out: dict[str, Any] = {"handshake": False, "error": "", "alpn": None, "responses": [], "resumed": None}
    sock = socket.create_connection((cmd["host"], cmd["port"]), timeout=5)
    try:
        conn = ctx.wrap_socket(sock, server_hostname=cmd.get("sni"), session=session)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        out["error"] = repr(exc)
        return out
    out["handshake"] = True
    out["alpn"] = conn.selected_alpn_protocol()
    with conn:
        reader = conn.makefile("rb")
        try:
            for request in cmd.get("requests", []):
                conn.sendall(request.encode("latin-1"))
                out["responses"].append(list(response(reader)))
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            out["error"] = repr(exc)
        first = conn.session
    if cmd.get("resume_with") and first is not None:
        again = {**cmd, "sni": cmd["resume_with"], "resume_with": None}
        out["resumed"] = tls(again, first, ctx)
    return out


def main() -> None:
    cmd = json.loads(sys.stdin.read())
    print(json.dumps(raw(cmd) if cmd["mode"] == "raw" else tls(cmd)))


if __name__ == "__main__":
    main()
