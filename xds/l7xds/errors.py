"""One exception root for the xDS package; grpc's exceptions never escape it."""

from __future__ import annotations

from l7.errors import L7GateError


class XdsError(L7GateError):
    """An xDS error."""


class InconsistentSnapshotError(XdsError):
    """The snapshot references resources it does not hold, or holds invalid ones; it was not published."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("inconsistent snapshot: " + "; ".join(problems))


class TranslationError(XdsError):
    """A rule set cannot be expressed as Envoy resources."""


class ServerError(XdsError):
    """The xDS gRPC server could not start or failed."""


class EnvoyProcessError(XdsError):
    """Envoy could not be started, did not become ready, or exited."""
