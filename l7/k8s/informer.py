"""List+watch of one resource into a shared :class:`Store`, over the small :class:`ClusterAPI` protocol.

::

    list ──► Store.replace(items) ──► watch(from list's resourceVersion) ──► ADDED/MODIFIED/DELETED
      ▲                                   │ BOOKMARK: only the resourceVersion moves on
      │ 410 Gone (or ERROR event 410)     │ stream ends (server timeout, dropped connection):
      └───────────────────────────────────┤   watch again from the last resourceVersion seen
                                          │ other error: back off (doubling, capped), then watch again
                                          ▼

An *optional* resource (Cilium's CRDs may not be installed) that is not served (404 on list) counts as
listed with no objects, and is listed again after the longest backoff.

The store holds the current objects (level based): an event seen twice changes nothing, and a relist
replaces the resource's objects wholesale, so a deletion missed during a gap disappears too. Runs in a
thread: the client is synchronous.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from l7.k8s.errors import Gone, KubeError
from l7.k8s.policies import Resource

log = logging.getLogger("l7gate.k8s")

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)


class ClusterAPI(Protocol):
    """What the controller needs from the API server (implemented by :class:`l7.kube.KubeClient`)."""

    def list(self, resource: Resource) -> tuple[list[Obj], str]:
        """All objects and the list's resourceVersion."""

    def watch(self, resource: Resource, resource_version: str, timeout_seconds: int) -> Iterator[Obj]:
        """Watch events (``{"type", "object"}``) after ``resource_version``, bookmarks included; raises
        :class:`Gone` when the version is too old, :class:`KubeError` for anything else."""

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """One object, or None when it does not exist (404)."""

    def patch_status(self, resource: Resource, namespace: str | None, name: str, patch: Obj) -> Obj:
        """JSON merge patch of the status subresource; raises :class:`Conflict` on 409."""


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Store:
    """Current objects per resource; ``on_change`` is called (outside the lock) after every change."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Resource, dict[Key, Obj]] = {}
        self._on_change = on_change
        self.changes = 0

    def replace(self, resource: Resource, items: list[Obj]) -> bool:
        new = {key_of(o): o for o in items}
        with self._lock:
            changed = self._objects.get(resource) != new
            self._objects[resource] = new
            if changed:
                self.changes += 1
        if changed:
            self._on_change()
        return changed

    def apply(self, resource: Resource, kind: str, obj: Obj) -> bool:
        key = key_of(obj)
        with self._lock:
            objects = self._objects.setdefault(resource, {})
            if kind == "DELETED":
                changed = objects.pop(key, None) is not None
            else:
                changed = objects.get(key) != obj
                objects[key] = obj
            if changed:
                self.changes += 1
        if changed:
            self._on_change()
        return changed

    def objects(self, resource: Resource) -> list[Obj]:
        with self._lock:
            return list(self._objects.get(resource, {}).values())

    def get(self, resource: Resource, key: Key) -> Obj | None:
        with self._lock:
            return self._objects.get(resource, {}).get(key)


@dataclass
class InformerStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    gone: int = 0
    errors: int = 0


def _resource_version(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    rv = meta.get("resourceVersion")
    return str(rv) if rv else None


class Informer:
    """One resource: list, then watch from the list's resourceVersion, until ``stop`` is set."""

    def __init__(
        self,
        api: ClusterAPI,
        resource: Resource,
        store: Store,
        stop: threading.Event,
        *,
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (0.2, 10.0),
        optional: bool = False,
    ) -> None:
        """``optional``: a resource whose CRD may not be installed (404 on list: no objects, look again
        after the longest backoff)."""
        self.api = api
        self.resource = resource
        self.store = store
        self.stop = stop
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.synced = threading.Event()
        self.resource_version: str | None = None
        self.stats = InformerStats()
        self.last_error: str | None = None
        self.optional = optional

    def run(self) -> None:
        delay = self.backoff[0]
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    items, rv = self.api.list(self.resource)
                    self.stats.lists += 1
                    self.store.replace(self.resource, items)
                    self.resource_version = rv
                    self.synced.set()
                self.stats.watches += 1
                if self._watch():
                    delay = self.backoff[0]
            except Gone:
                self.stats.gone += 1
                log.info(
                    "%s: resourceVersion %s expired (410): listing again",
                    self.resource,
                    self.resource_version,
                )
                self.resource_version = None
            except KubeError as exc:
                if exc.status == 404 and self.optional and self.resource_version is None:
                    log.info("%s: not served (CRD not installed?): no objects for now", self.resource)
                    self.store.replace(self.resource, [])
                    self.synced.set()
                    self.stop.wait(self.backoff[1])
                    continue
                self.stats.errors += 1
                self.last_error = str(exc)
                log.warning("%s: %s; retrying in %.1fs", self.resource, exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])

    def _watch(self) -> bool:
        """Follow one watch stream until it ends. Returns True when it delivered anything."""
        assert self.resource_version is not None
        delivered = False
        for event in self.api.watch(self.resource, self.resource_version, self.watch_timeout):
            if self.stop.is_set():
                return delivered
            kind = str(event.get("type"))
            obj = event.get("object") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 0)
                message = str(obj.get("message") or obj)
                if code == 410:
                    raise Gone(message, 410)
                raise KubeError(f"watch error {code}: {message}", code)
            rv = _resource_version(obj)
            delivered = True
            if kind == "BOOKMARK":
                self.stats.bookmarks += 1
            elif kind in ("ADDED", "MODIFIED", "DELETED"):
                self.stats.events += 1
                self.store.apply(self.resource, kind, obj)
            else:
                log.warning("%s: unknown watch event type %s", self.resource, kind)
                continue
            if rv:
                self.resource_version = rv
        return delivered
