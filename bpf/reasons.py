"""Drop reasons, verdicts, event types and hooks: the mirror of ``bpf/lib/reasons.h``.

The numbers are ABI with the tc programs; ``tests/datapath/test_reasons.py`` parses the header and
checks that both sides agree.
"""

from __future__ import annotations

from enum import IntEnum


class DropReason(IntEnum):
    """Why the datapath dropped a packet (``DROP_*``)."""

    NONE = 0
    POLICY_DENIED = 1
    POLICY_DENY_RULE = 2
    SOURCE_SPOOFED = 3
    UNKNOWN_ENDPOINT = 4
    ENDPOINT_NOT_READY = 5
    MALFORMED_IPV4 = 6
    MALFORMED_IPV6 = 7
    MALFORMED_L4 = 8
    IPV4_OPTION_SOURCE_ROUTE = 9
    IPV4_OPTIONS_MALFORMED = 10
    IPV6_EXT_UNSUPPORTED = 11
    IPV6_EXT_CHAIN_TOO_LONG = 12
    IPV6_ROUTING_HEADER = 13
    FRAG_NO_FIRST = 14
    FRAG_REDIRECT = 15
    PROXY_NOT_FOUND = 16
    SK_ASSIGN_FAILED = 17
    UNSUPPORTED_L3 = 18
    PROXY_PORT_DIRECT = 19


class Verdict(IntEnum):
    """A policy verdict (``VERDICT_*``)."""

    NONE = 0
    ALLOW = 1
    DROP = 2
    REDIRECT = 3
    AUDIT = 4


class EventType(IntEnum):
    """Kind of a datapath event (``EVENT_*``)."""

    DROP = 1
    VERDICT = 2


class Hook(IntEnum):
    """Which tc program reported an event (``HOOK_*``)."""

    FROM_LXC = 1
    TO_LXC = 2
    FROM_UPLINK = 3
    TO_UPLINK = 4
