"""The Kubernetes API client: the only module that imports ``kubernetes``.

:class:`KubeClient` implements :class:`l7.k8s.informer.ClusterAPI` with the official client's generated
API classes (``CoreV1Api``, ``CustomObjectsApi``) over its REST layer (auth, TLS, kubeconfig or
in-cluster config). Lists and watches are read raw (``_preload_content=False``) and parsed as JSON: the
controller works on plain dicts. Watches ask for bookmarks and a server-side timeout; a watch stream is
read line by line (one JSON event per line). Client exceptions are mapped to :mod:`l7.k8s.errors` here
(410 → :class:`Gone`, 409 → :class:`Conflict`, anything else → :class:`KubeError`) and never escape.

Synchronous: call it from threads only, never from an event loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import urllib3

from l7.k8s.errors import Conflict, Gone, KubeError
from l7.k8s.policies import NAMESPACES, NODES, PODS, SECRETS, SERVICES, Resource

Obj = dict[str, Any]
_config: Any = kubernetes.config  # partly untyped: used through Any
CONNECT_TIMEOUT = 10.0


def load_config(kubeconfig: Path | None = None, context: str | None = None) -> Any:
    """In-cluster configuration inside a pod (service account token), else the kubeconfig file."""
    config = kubernetes.client.Configuration()
    try:
        if kubeconfig is None:
            try:
                _config.load_incluster_config(client_configuration=config)
                return config
            except _config.ConfigException:
                pass
        _config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context, client_configuration=config
        )
    except (_config.ConfigException, OSError) as exc:
        raise KubeError(f"no Kubernetes configuration: {exc}") from None
    return config


def _error(exc: BaseException, what: str) -> KubeError:
    if isinstance(exc, kubernetes.client.exceptions.ApiException):
        status = int(exc.status or 0)
        message = f"{what}: {status} {exc.reason or ''}".strip()
        body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
        if body:
            try:
                message += f": {json.loads(body).get('message', body)}"
            except (ValueError, AttributeError):
                message += f": {body}"
        if status == 410:
            return Gone(message, status)
        if status == 409:
            return Conflict(message, status)
        return KubeError(message, status)
    return KubeError(f"{what}: {exc}")


_TRANSPORT = (urllib3.exceptions.HTTPError, OSError, ValueError)


class KubeClient:
    """Lists, watches and status patches for the resources of :mod:`l7.k8s.policies`."""

    def __init__(self, configuration: Any) -> None:
        self.api_client: Any = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self._open: set[Any] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, kubeconfig: Path | None = None, context: str | None = None) -> KubeClient:
        return cls(load_config(kubeconfig, context))

    def close(self) -> None:
        """Close open watch streams (their threads see the stream end) and the connection pool."""
        with self._lock:
            streams = list(self._open)
        for stream in streams:
            stream.shutdown()  # safe from another thread: the reader sees the stream end
        self.api_client.close()

    # -------------------------------------------------------------------------------- requests
    def _lister(self, resource: Resource) -> Callable[..., Any]:
        core: dict[Resource, Callable[..., Any]] = {
            PODS: self.core.list_pod_for_all_namespaces,
            NAMESPACES: self.core.list_namespace,
            NODES: self.core.list_node,
            SERVICES: self.core.list_service_for_all_namespaces,
        }
        if resource in core:
            return core[resource]

        def custom(**kwargs: Any) -> Any:
            return self.custom.list_cluster_custom_object(
                resource.group, resource.version, resource.plural, **kwargs
            )

        return custom

    def list(self, resource: Resource) -> tuple[list[Obj], str]:
        what = f"list {resource}"
        try:
            response = self._lister(resource)(_preload_content=False, _request_timeout=(CONNECT_TIMEOUT, 60))
            data = json.loads(response.data)
        except kubernetes.client.exceptions.ApiException as exc:
            raise _error(exc, what) from None
        except _TRANSPORT as exc:
            raise _error(exc, what) from None
        items = data.get("items") or []
        for item in items:  # a list's items carry no kind/apiVersion
            item.setdefault("kind", resource.kind)
            item.setdefault("apiVersion", resource.api_version)
        return items, str((data.get("metadata") or {}).get("resourceVersion") or "")

    def watch(self, resource: Resource, resource_version: str, timeout_seconds: int) -> Iterator[Obj]:
        what = f"watch {resource}"
        try:
            stream = self._lister(resource)(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT, timeout_seconds + 30),
            )
        except kubernetes.client.exceptions.ApiException as exc:
            raise _error(exc, what) from None
        except _TRANSPORT as exc:
            raise _error(exc, what) from None
        with self._lock:
            self._open.add(stream)
        try:
            yield from self._events(stream, what)
        finally:
            with self._lock:
                self._open.discard(stream)
            stream.release_conn()

    @staticmethod
    def _events(stream: Any, what: str) -> Iterator[Obj]:
        buffer = b""
        try:
            for chunk in stream.stream(amt=None, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except _TRANSPORT as exc:
            # a dropped connection ends the stream like a server timeout: the informer watches again
            if isinstance(exc, ValueError):
                raise _error(exc, what) from None
            return
        if buffer.strip():
            try:
                yield json.loads(buffer)
            except ValueError as exc:
                raise _error(exc, what) from None

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        what = f"get {resource} {namespace + '/' if namespace else ''}{name}"
        if resource != SECRETS:
            raise KubeError(f"{what}: only secrets are read one by one")
        try:
            response: Any = self.core.read_namespaced_secret(
                name, namespace or "default", _preload_content=False, _request_timeout=(CONNECT_TIMEOUT, 30)
            )
            data: Obj = json.loads(response.data)
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(exc, what) from None
        except _TRANSPORT as exc:
            raise _error(exc, what) from None
        return data

    def patch_status(self, resource: Resource, namespace: str | None, name: str, patch: Obj) -> Obj:
        what = f"patch {resource} {namespace + '/' if namespace else ''}{name} status"
        try:
            options: dict[str, Any] = {
                "field_manager": "l7gate-agent",
                "_content_type": "application/merge-patch+json",
                "_request_timeout": (CONNECT_TIMEOUT, 30),
            }
            where = (resource.group, resource.version)
            if resource.namespaced:
                result = self.custom.patch_namespaced_custom_object_status(
                    *where, namespace or "default", resource.plural, name, patch, **options
                )
            else:
                result = self.custom.patch_cluster_custom_object_status(
                    *where, resource.plural, name, patch, **options
                )
        except kubernetes.client.exceptions.ApiException as exc:
            raise _error(exc, what) from None
        except _TRANSPORT as exc:
            raise _error(exc, what) from None
        return dict(result) if isinstance(result, dict) else {}
