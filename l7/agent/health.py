"""The agent's health endpoints, served by the metrics service beside ``/metrics`` (same address)::

    GET /healthz  liveness:  200 while the agent's main loop goes round (it does every poll interval,
                             0.5 s, and after each application); 503 when it last did more than
                             LIVENESS_TIMEOUT s ago (stuck: a probe failing long enough restarts it)
    GET /readyz   readiness: 200 once the agent applied its inputs (status ``ready``); 503 before
    GET /metrics  the Prometheus exposition (any other path: 404)

The decisions are pure functions of what the agent records (:class:`Probed`); :func:`app` is the WSGI
application that routes the three paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

#: A main loop silent for longer is stuck. Its longest legitimate pause is one application of the
#: inputs (seconds for a first sync of a big node), well below this.
LIVENESS_TIMEOUT = 60.0

HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"


@runtime_checkable
class Probed(Protocol):
    """What the probes read from the agent (:class:`l7.agent.node.Agent`)."""

    @property
    def ready(self) -> bool: ...
    @property
    def ticked(self) -> float | None:
        """``time.monotonic()`` when the main loop last went round (None: not yet)."""

    @property
    def started(self) -> float: ...


@dataclass(frozen=True)
class Probe:
    """A probe's answer: ``ok`` → 200, else 503; ``reason`` is the body."""

    ok: bool
    reason: str


def liveness(agent: Probed, now: float, timeout: float = LIVENESS_TIMEOUT) -> Probe:
    """Alive while the main loop went round within ``timeout`` s (before its first round: since the
    agent started)."""
    last = agent.ticked if agent.ticked is not None else agent.started
    age = now - last
    if age <= timeout:
        return Probe(True, f"ok: the main loop went round {age:.1f}s ago")
    return Probe(False, f"stuck: the main loop last went round {age:.1f}s ago (limit {timeout:.0f}s)")


def readiness(agent: Probed) -> Probe:
    if agent.ready:
        return Probe(True, "ok: inputs applied")
    return Probe(False, "not ready: the inputs are not applied yet")


def app(metrics: WSGIApplication, live: Callable[[], Probe], ready: Callable[[], Probe]) -> WSGIApplication:
    """Route ``/healthz``, ``/readyz`` and ``/metrics`` (GET or HEAD); 404 elsewhere."""
    probes = {HEALTHZ: live, READYZ: ready}

    def route(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == METRICS:
            return metrics(environ, start_response)
        probe = probes.get(path)
        if probe is None:
            return _reply(
                start_response, "404 Not Found", f"no such path {path!r}: {HEALTHZ}, {READYZ}, {METRICS}"
            )
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", "use GET")
        answer = probe()
        return _reply(start_response, "200 OK" if answer.ok else "503 Service Unavailable", answer.reason)

    return route


def _reply(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]
