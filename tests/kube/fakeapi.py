"""An in-process Kubernetes API server speaking the real wire protocol (HTTP/1.1 + JSON), for tests.

Enough of the API for l7gate's controller, with the real semantics:

* ``GET /api/v1/<plural>`` and ``GET /apis/<group>/<version>/<plural>``: a list (``items``,
  ``metadata.resourceVersion``) or, with ``?watch=1``, a chunked stream of one JSON event per line from
  ``resourceVersion`` on: history replayed, then live events; ``BOOKMARK`` events when the client sent
  ``allowWatchBookmarks=true`` and the stream was idle for ``bookmark_interval``; the stream ends after
  ``timeoutSeconds`` (capped by ``watch_cap``); a version older than the compaction point gets an
  ``ERROR`` event with a ``410 Expired`` Status (what an etcd-backed server sends).
* ``GET .../namespaces/<ns>/<plural>/<name>``: one object (404 when there is none).
* ``PATCH .../<plural>/<name>/status`` with ``application/merge-patch+json``: RFC 7386 merge patch of the
  status only (the status subresource), ``metadata.resourceVersion`` in the patch is a precondition
  (409 Conflict when stale); a new resourceVersion and a MODIFIED event.
* resourceVersions are one cluster-wide counter; ``metadata.generation`` moves on spec changes only.

Test hooks: :meth:`create` / :meth:`update` / :meth:`delete` (optionally validated against a JSON
schema per plural, like a CRD's), :meth:`compact` (forget history: the next watch from an older
version gets 410), :meth:`drop_watches` (cut every open watch connection mid-stream).
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


KINDS = [
    Kind("", "v1", "pods", "Pod", True),
    Kind("", "v1", "namespaces", "Namespace", False),
    Kind("", "v1", "nodes", "Node", False),
    Kind("", "v1", "services", "Service", True),
    Kind("", "v1", "secrets", "Secret", True),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Kind("l7gate.io", "v1alpha1", "l7networkpolicies", "L7NetworkPolicy", True),
    Kind("l7gate.io", "v1alpha1", "l7clusterwidenetworkpolicies", "L7ClusterwideNetworkPolicy", False),
    Kind("cilium.io", "v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", True),
    Kind("cilium.io", "v2", "ciliumclusterwidenetworkpolicies", "CiliumClusterwideNetworkPolicy", False),
]
BY_PLURAL = {k.plural: k for k in KINDS}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def status_object(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeAPIServer:
    def __init__(
        self,
        *,
        bookmark_interval: float | None = 0.3,
        watch_cap: float = 30.0,
        validators: dict[str, Callable[[Obj], None]] | None = None,
    ) -> None:
        self.bookmark_interval = bookmark_interval
        self.watch_cap = watch_cap
        self.validators = validators or {}
        self.cond = threading.Condition()
        self.rv = 100
        self.compacted = 0
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {k.plural: {} for k in KINDS}
        self.events: list[tuple[int, str, str, Obj]] = []  # (rv, plural, type, object)
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.watch_sockets: set[socket.socket] = set()
        self.patches: list[tuple[str, str, Obj]] = []
        self.unserved: set[str] = set()  # plurals answered with 404 (a CRD not installed)
        self.counts = {"bookmarks": 0, "gone": 0, "dropped": 0, "conflicts": 0}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fakeapi", daemon=True)

    # ------------------------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAPIServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.drop_watches()
        self._httpd.shutdown()
        self._httpd.server_close()

    # ----------------------------------------------------------------------------------- test hooks
    def _commit(self, plural: str, kind: str, obj: Obj) -> None:
        """With the lock held: a new resourceVersion for ``obj`` and an event."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, plural, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def create(self, plural: str, obj: Obj) -> Obj:
        k = BY_PLURAL[plural]
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", k.api_version)
        obj.setdefault("kind", k.kind)
        meta = obj.setdefault("metadata", {})
        if k.namespaced:
            meta.setdefault("namespace", "default")
        if plural in self.validators:
            self.validators[plural](obj)
        with self.cond:
            key = (meta.get("namespace", ""), meta["name"])
            if key in self.objects[plural]:
                raise ValueError(f"{plural} {key} exists")
            meta.update(
                uid=str(uuid.uuid4()),
                generation=1,
                creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            obj.pop("status", None) if plural.startswith(("l7", "cilium")) else None
            self.objects[plural][key] = obj
            self._commit(plural, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, plural: str, obj: Obj) -> Obj:
        """Replace an object's spec (and labels); the status subresource keeps the stored status."""
        k = BY_PLURAL[plural]
        meta = obj["metadata"]
        key = (meta.get("namespace", "default" if k.namespaced else ""), meta["name"])
        if plural in self.validators:
            self.validators[plural](obj)
        with self.cond:
            old = self.objects[plural][key]
            new = copy.deepcopy(obj)
            new.setdefault("apiVersion", k.api_version)
            new.setdefault("kind", k.kind)
            new_meta = new.setdefault("metadata", {})
            for field in ("uid", "creationTimestamp", "generation", "namespace"):
                if field in old["metadata"]:
                    new_meta[field] = old["metadata"][field]
            if "status" in old and plural.startswith(("l7", "cilium")):
                new["status"] = old["status"]
            body = {k2: v for k2, v in new.items() if k2 not in ("metadata", "status")}
            old_body = {k2: v for k2, v in old.items() if k2 not in ("metadata", "status")}
            if body != old_body:
                new_meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            self.objects[plural][key] = new
            self._commit(plural, "MODIFIED", new)
            return copy.deepcopy(new)

    def delete(self, plural: str, name: str, namespace: str = "") -> None:
        k = BY_PLURAL[plural]
        key = (namespace or ("default" if k.namespaced else ""), name)
        with self.cond:
            obj = self.objects[plural].pop(key)
            self._commit(plural, "DELETED", obj)

    def get(self, plural: str, name: str, namespace: str = "") -> Obj:
        k = BY_PLURAL[plural]
        with self.cond:
            return copy.deepcopy(
                self.objects[plural][(namespace or ("default" if k.namespaced else "")), name]
            )

    def compact(self) -> None:
        """Forget the event history: a watch from any version before now gets 410 Gone."""
        with self.cond:
            self.compacted = self.rv
            self.events.clear()

    def drop_watches(self) -> int:
        with self.cond:
            socks = list(self.watch_sockets)
            self.watch_sockets.clear()
            self.counts["dropped"] += len(socks)
            self.cond.notify_all()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        return len(socks)

    def watchers(self, plural: str | None = None) -> int:
        return sum(1 for m, p, q in self.requests if m == "WATCH" and (plural is None or p.endswith(plural)))

    # -------------------------------------------------------------------------------------- serving
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Obj) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self) -> tuple[Kind, str | None, str | None, bool] | None:
                """(kind, namespace, name, status subresource) of the path."""
                parts = [p for p in urlsplit(self.path).path.split("/") if p]
                for k in KINDS:
                    prefix = [p for p in k.prefix.split("/") if p]
                    if parts[: len(prefix)] != prefix:
                        continue
                    rest = parts[len(prefix) :]
                    namespace = None
                    if len(rest) >= 3 and rest[0] == "namespaces" and k.namespaced and rest[2] == k.plural:
                        namespace, rest = rest[1], rest[2:]
                    if not rest or rest[0] != k.plural or (namespace is None and len(rest) > 3):
                        continue
                    if k.plural == "namespaces" and len(rest) > 2 and rest[2] != "status":
                        continue  # /api/v1/namespaces/<ns>/<plural>/...: a namespaced resource
                    name = rest[1] if len(rest) > 1 else None
                    status = len(rest) > 2 and rest[2] == "status"
                    return k, namespace, name, status
                return None

            def do_GET(self) -> None:
                route = self._route()
                query = parse_qs(urlsplit(self.path).query)
                if route is None or route[0].plural in server.unserved:
                    self._send(404, status_object(404, "NotFound", f"no route {self.path}"))
                    return
                kind = route[0]
                if route[2] is not None:  # GET one object
                    server.requests.append(("GET", self.path, query))
                    with server.cond:
                        found = server.objects[kind.plural].get((route[1] or "", route[2]))
                        found = copy.deepcopy(found)
                    if found is None:
                        self._send(404, status_object(404, "NotFound", f"{kind.plural} {route[2]} not found"))
                    else:
                        self._send(200, found)
                    return
                if query.get("watch", ["false"])[0] in ("1", "true"):
                    server.requests.append(("WATCH", self.path, query))
                    self._watch(kind, query)
                    return
                server.requests.append(("LIST", self.path, query))
                with server.cond:
                    items = [copy.deepcopy(o) for o in server.objects[kind.plural].values()]
                    rv = server.rv
                for item in items:  # a real list has no kind/apiVersion on its items
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                self._send(
                    200,
                    {
                        "kind": f"{kind.kind}List",
                        "apiVersion": kind.api_version,
                        "metadata": {"resourceVersion": str(rv)},
                        "items": items,
                    },
                )

            def _chunk(self, event: Obj) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _watch(self, kind: Kind, query: dict[str, list[str]]) -> None:
                since = int(query.get("resourceVersion", ["0"])[0] or 0)
                bookmarks = query.get("allowWatchBookmarks", ["false"])[0] in ("1", "true")
                timeout = min(float(query.get("timeoutSeconds", [server.watch_cap])[0]), server.watch_cap)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sock = self.connection
                with server.cond:
                    server.watch_sockets.add(sock)
                deadline = time.monotonic() + timeout
                try:
                    with server.cond:
                        expired = since < server.compacted
                    if expired:
                        server.counts["gone"] += 1
                        self._chunk(
                            {
                                "type": "ERROR",
                                "object": status_object(
                                    410, "Expired", f"too old resource version: {since} ({server.compacted})"
                                ),
                            }
                        )
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    last_sent = time.monotonic()
                    while True:
                        with server.cond:
                            if sock not in server.watch_sockets:
                                return  # dropped: the socket is shut down, no clean end
                            pending = [e for e in server.events if e[0] > since and e[1] == kind.plural]
                            if not pending:
                                wait = deadline - time.monotonic()
                                if bookmarks and server.bookmark_interval is not None:
                                    wait = min(
                                        wait, server.bookmark_interval - (time.monotonic() - last_sent)
                                    )
                                if wait > 0:
                                    server.cond.wait(wait)
                                pending = [e for e in server.events if e[0] > since and e[1] == kind.plural]
                            current = server.rv
                            if sock not in server.watch_sockets:
                                return
                        for rv, _, typ, obj in pending:
                            self._chunk({"type": typ, "object": obj})
                            since = rv
                            last_sent = time.monotonic()
                        now = time.monotonic()
                        if now >= deadline:
                            self.wfile.write(b"0\r\n\r\n")
                            return
                        if (
                            not pending
                            and bookmarks
                            and server.bookmark_interval is not None
                            and now - last_sent >= server.bookmark_interval
                        ):
                            since = max(since, current)
                            server.counts["bookmarks"] += 1
                            self._chunk(
                                {
                                    "type": "BOOKMARK",
                                    "object": {
                                        "kind": kind.kind,
                                        "apiVersion": kind.api_version,
                                        "metadata": {"resourceVersion": str(since)},
                                    },
                                }
                            )
                            last_sent = now
                except OSError:
                    return
                finally:
                    with server.cond:
                        server.watch_sockets.discard(sock)
                    self.close_connection = True

            def do_PATCH(self) -> None:
                route = self._route()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(("PATCH", self.path, {}))
                if route is None or route[2] is None or not route[3]:
                    self._send(404, status_object(404, "NotFound", f"no route {self.path}"))
                    return
                kind, namespace, name, _ = route
                if self.headers.get("Content-Type", "").split(";")[0] != "application/merge-patch+json":
                    self._send(415, status_object(415, "UnsupportedMediaType", "want a merge patch"))
                    return
                key = (namespace or "", name or "")
                with server.cond:
                    obj = server.objects[kind.plural].get(key)
                    if obj is None:
                        self._send(404, status_object(404, "NotFound", f"{kind.plural} {key} not found"))
                        return
                    want = (body.get("metadata") or {}).get("resourceVersion")
                    if want is not None and want != obj["metadata"]["resourceVersion"]:
                        server.counts["conflicts"] += 1
                        self._send(
                            409,
                            status_object(
                                409,
                                "Conflict",
                                "the object has been modified; please apply your "
                                "changes to the latest version and try again",
                            ),
                        )
                        return
                    if "status" in body:
                        obj["status"] = merge_patch(obj.get("status"), body["status"])
                    server.patches.append((kind.plural, f"{namespace}/{name}", copy.deepcopy(body)))
                    server._commit(kind.plural, "MODIFIED", obj)
                    result = copy.deepcopy(obj)
                self._send(200, result)

        return Handler
