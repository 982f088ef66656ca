"""Transparent DNS proxy: the reply contract and the answers that feed toFQDNs.

::

    client ──query──► datapath redirect ──► UDP/TCP listener (IP_TRANSPARENT; original server from
                                            IP_RECVORIGDSTADDR / getsockname)
                                               │ wire.parse_query (header + one question)
                                               ▼
                                            decide(source, server, port, protocol, qname, qtype)
                      REFUSED ◄── Refused ─────┤
                                               │ Allowed
                                               ▼
                                            upstream: same transport, server asked, fresh ID and port,
                                            one deadline ──────────────► SERVFAIL on failure/timeout
                                               │ answer (ID + question match, from the server asked)
                                               ▼
                                            answers.answer_ips (query name's CNAME chain, A/AAAA)
                                               │ await on_answer(source, qname, ips)  ──► agent: ipcache
                                               ▼
    client ◄──answer (client's ID, from the server's address: raw socket + IP_PKTINFO)

Name matching (matchName/matchPattern) is ``l7.policy.fqdn``; the decision is the agent's callable.
"""

from .errors import DNSProxyError, MalformedMessage, SocketSetupError, UpstreamError, UpstreamTimeout
from .metrics import ProxyStats, StatsCollector
from .policy import (
    ALLOWED,
    AUDITED,
    REFUSED,
    Allowed,
    Decide,
    OnAnswer,
    OnEvent,
    QueryEvent,
    Refused,
    allow_names,
)
from .proxy import DNSProxy, ProxyConfig
from .sockets import Listeners

__all__ = [
    "ALLOWED",
    "AUDITED",
    "REFUSED",
    "Allowed",
    "DNSProxy",
    "DNSProxyError",
    "Decide",
    "Listeners",
    "MalformedMessage",
    "OnAnswer",
    "OnEvent",
    "ProxyConfig",
    "ProxyStats",
    "QueryEvent",
    "Refused",
    "SocketSetupError",
    "StatsCollector",
    "UpstreamError",
    "UpstreamTimeout",
    "allow_names",
]
