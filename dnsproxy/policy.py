"""The proxy's collaborators: the per-query decision, the answer hook and the flow-log event.

The agent implements :class:`Decide` from the resolved DNS rules (which endpoint the source is, which
rules apply to this server and port) and :class:`OnAnswer` (write the answered IPs into the datapath's
ipcache). Tests pass plain functions. Name matching itself lives in :mod:`l7.policy.fqdn`;
:func:`allow_names` is the smallest decision built on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from l7.policy import fqdn

Protocol_ = Literal["udp", "tcp"]


@dataclass(frozen=True, slots=True)
class Allowed:
    """Forward the query to the server the client asked."""

    rule: str = ""
    """What allowed it, for the flow log (free text, optional)."""
    audit: bool = False
    """Forwarded only because the client is in audit mode: the flow log says ``audit``, not ``allowed``."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer REFUSED (or NXDOMAIN, see ``ProxyConfig.refuse_rcode``) without asking upstream."""

    reason: str = ""


ALLOWED = Allowed()
AUDITED = Allowed(audit=True)
REFUSED = Refused()

Verdict = Allowed | Refused


class Decide(Protocol):
    """Whether ``source_ip`` may resolve ``qname``/``qtype`` at ``server_ip``:``server_port``.

    ``qname`` is normalized (lower case, no trailing dot). Called on the event loop for every query:
    it must be fast and must not block.
    """

    def __call__(  # noqa: PLR0917 - the agent's interface: positional by design
        self, source_ip: str, server_ip: str, server_port: int, protocol: Protocol_, qname: str, qtype: int
    ) -> Verdict: ...


class OnAnswer(Protocol):
    """Called with the IPs an allowed answer gives for ``qname`` before the answer is released.

    ``ips_with_ttl`` holds (IP text, TTL seconds) for every A/AAAA record on the query name's CNAME chain
    in the answer section; it is called only when there is at least one. A plain function runs inline
    (it must not block); a coroutine function is awaited under the query's deadline. Raising (or missing
    the deadline) makes the client get SERVFAIL instead of the answer: the proxy fails closed.
    """

    def __call__(
        self, source_ip: str, qname: str, ips_with_ttl: tuple[tuple[str, int], ...]
    ) -> Awaitable[None] | None: ...


class QueryEvent(NamedTuple):
    """One query's outcome, for the flow log."""

    source_ip: str
    source_port: int
    server_ip: str
    server_port: int
    protocol: Protocol_
    qname: str
    qtype: int
    rcode: int
    """The rcode the client got; -1 when the query was dropped unanswered."""
    ips: tuple[tuple[str, int], ...]
    verdict: str
    """``allowed``, ``refused``, ``overload``, ``malformed``, ``unsupported``, ``servfail``, ``timeout``."""


class OnEvent(Protocol):
    def __call__(self, event: QueryEvent) -> None: ...


def allow_names(matchers: Iterable[fqdn.NameMatcher]) -> Decide:
    """A decision that allows a query, from anyone to any server, when one of ``matchers`` selects its
    name (for tests, the standalone proxy and as an example; the agent's decision is per endpoint)."""
    frozen = tuple(matchers)

    def decide(  # noqa: PLR0917
        source_ip: str, server_ip: str, server_port: int, protocol: Protocol_, qname: str, qtype: int
    ) -> Verdict:
        return ALLOWED if any(matcher.matches(qname) for matcher in frozen) else REFUSED

    return decide
