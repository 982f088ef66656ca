"""The DNS proxy's exceptions: one root, the docstring is the default message.

Exceptions of the socket layer and of dnslib never escape this package; they are mapped to these at the
I/O boundary (``raise X from exc``).
"""

from __future__ import annotations

from l7.errors import L7GateError


class DNSProxyError(L7GateError):
    """A DNS proxy error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (self.__doc__ or "").strip())


class MalformedMessage(DNSProxyError):
    """A DNS message could not be parsed."""

    def __init__(self, message: str | None = None, offset: int = 0) -> None:
        super().__init__(message)
        #: Where in the message parsing stopped.
        self.offset = offset

    def __str__(self) -> str:
        return f"{super().__str__()} (at offset {self.offset})"


class UpstreamError(DNSProxyError):
    """The upstream DNS server did not answer usefully."""


class UpstreamTimeout(UpstreamError):
    """The upstream DNS server did not answer before the query's deadline."""


class SocketSetupError(DNSProxyError):
    """A proxy socket could not be created or configured."""
