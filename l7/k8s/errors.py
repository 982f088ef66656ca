"""Errors of the Kubernetes side. :mod:`l7.kube` maps the client's exceptions to these (HTTP status
kept), so nothing from the ``kubernetes`` package escapes it."""

from __future__ import annotations

from l7.errors import L7GateError


class KubeError(L7GateError):
    """A request to the API server failed (``status`` is the HTTP status, 0 for a transport error)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Gone(KubeError):
    """410: the resourceVersion a watch started from is too old: list again."""


class Conflict(KubeError):
    """409: the object changed since the resourceVersion the request was based on."""
