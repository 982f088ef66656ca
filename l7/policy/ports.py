"""L4 ports as policies write them: a decimal number (``"0"`` = every port) or an IANA service name."""

from __future__ import annotations

import re

MAX_PORT = 65535
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,4}")
_SERVICE_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def is_service_name(value: str) -> bool:
    """An IANA service name (RFC 6335): 1–15 of ``a-z0-9-``, a letter, no leading/trailing/double ``-``.

    Upper case is accepted like Cilium does (the model lower-cases names).
    """
    lowered = value.lower()
    return (
        0 < len(value) <= 15
        and _SERVICE_NAME.fullmatch(lowered) is not None
        and any(c.isalpha() for c in lowered)
    )


def parse_port(value: str) -> int | str:
    """The port number, or the (lower-case) service name; :class:`ValueError` says why not."""
    if _DECIMAL.fullmatch(value):
        number = int(value)
        if number > MAX_PORT:
            raise ValueError(f"port {value} is out of range 0-{MAX_PORT}")
        return number
    if value.isdigit():
        raise ValueError(f"port {value!r}: numbers are written in decimal without leading zeros")
    if is_service_name(value):
        return value.lower()
    raise ValueError(
        f"port {value!r} is neither a number 0-{MAX_PORT} nor a service name "
        "(1-15 of a-z, 0-9 and '-', at least one letter)"
    )
