"""The lab's servers in one process per namespace (self-contained: run by path, imports only the stdlib).

``python serve.py --hostname H [--ip IP]... [--cert C --key K [--client-ca CA]] --serve JSON...``
where each JSON is ``{"kind": "http"|"whoami"|"tcp-echo", "port": N, "tls": bool, "paths": {...}|null}``.
With ``--client-ca`` the TLS servers require a client certificate signed by that CA (mutual TLS); ``whoami``
then shows the certificate's subject (``ClientCert: CN=...``).

- ``http``: fixed paths → bodies; unknown path → 404; without paths every path → ``Hello from HOST``.
- ``whoami``: the request echoed like traefik/whoami (Hostname, IP, RemoteAddr, request line, headers).
- ``tcp-echo``: every byte back.

Each server listens on ``[::]`` dual-stack; TLS handshakes run in the connection's thread.
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import socket
import socketserver
import ssl
import sys
import threading
from types import FrameType
from typing import Any
from urllib.parse import urlsplit


def host_port(address: Any) -> str:
    """``host:port`` of a client (``[v6]:port``), v4-mapped IPv6 shown as IPv4."""
    host, port = str(address[0]), int(address[1])
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DualStackMixin:
    """Bound to ``[::]:port``, accepting IPv4 too; optionally TLS (handshake in the request's thread)."""

    address_family: int = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    socket: socket.socket

    def __init__(self, *args: Any, tls: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        self.tls = tls
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()  # type: ignore[misc]

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)  # type: ignore[misc]
            return
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(conn, client_address)  # type: ignore[misc]
        finally:
            conn.close()


class HTTPServer(DualStackMixin, http.server.ThreadingHTTPServer):
    def __init__(
        self, port: int, kind: str, *, hostname: str, ips: list[str], paths: dict[str, str] | None,
        tls: ssl.SSLContext | None,
    ) -> None:  # fmt: skip
        self.kind, self.hostname, self.ips, self.paths = kind, hostname, ips, paths
        super().__init__(("::", port), HTTPHandler, tls=tls)


class HTTPHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "l7gate-lab"
    sys_version = ""
    server: HTTPServer

    def _reply(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _handle(self, head: bool = False) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        srv = self.server
        text = "text/plain; charset=utf-8"
        if srv.kind == "whoami":
            lines = [f"Hostname: {srv.hostname}", *(f"IP: {ip}" for ip in srv.ips)]
            lines += [f"RemoteAddr: {host_port(self.client_address)}", self.requestline]
            peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
            if peer:
                subject = ",".join("=".join(map(str, a)) for rdn in peer.get("subject", ()) for a in rdn)
                lines.append(f"ClientCert: {subject.replace('commonName', 'CN')}")
            lines += [f"{k}: {v}" for k, v in self.headers.items()]
            self._reply(200, ("\n".join(lines) + "\n\n").encode(), text, head)
        elif srv.paths is None:
            self._reply(200, f"Hello from {srv.hostname}\n".encode(), text, head)
        elif (path := urlsplit(self.path).path) in srv.paths:
            self._reply(200, srv.paths[path].encode(), "text/html", head)
        else:
            self._reply(404, b"404 page not found\n", text, head)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle(head=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class EchoServer(DualStackMixin, socketserver.ThreadingTCPServer):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve.py")
    parser.add_argument("--hostname", default="lab")
    parser.add_argument("--ip", action="append", default=[])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca", help="require client certificates signed by this CA (mTLS)")
    parser.add_argument("--serve", action="append", default=[], type=json.loads, required=True)
    args = parser.parse_args(argv)

    tls = None
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
        tls.set_alpn_protocols(["http/1.1"])
        if args.client_ca:
            tls.verify_mode = ssl.CERT_REQUIRED
            tls.load_verify_locations(args.client_ca)
    servers: list[socketserver.BaseServer] = []
    for spec in args.serve:
        ctx = tls if spec.get("tls") else None
        if spec["kind"] == "tcp-echo":
            servers.append(EchoServer(("::", spec["port"]), EchoHandler, tls=ctx))
        else:
            kw = {"hostname": args.hostname, "ips": args.ip, "paths": spec.get("paths"), "tls": ctx}
            servers.append(HTTPServer(spec["port"], spec["kind"], **kw))
        print(f"{spec['kind']} on [::]:{spec['port']}{' (tls)' if ctx else ''}", flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        signal.pause()
    finally:
        for s in servers:
            s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
