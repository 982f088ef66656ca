"""``rules.http[].headers`` entries: ``"Name"`` (present) or ``"Name: value"`` (exact value).

Parsed like Cilium: split at the first space, a trailing ``:`` of the name is dropped.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def parse_header(entry: str) -> tuple[str, str | None]:
    """``"X-Key: v"`` → ``("X-Key", "v")``; ``"X-Key"`` → ``("X-Key", None)``."""
    name, space, value = entry.partition(" ")
    if not space:
        return entry, None
    return name.removesuffix(":"), value


def is_header_name(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


def validate_header(entry: str) -> str | None:
    """Why ``entry`` is not a valid ``headers`` entry, or ``None``."""
    name, value = parse_header(entry)
    if not is_header_name(name):
        return f"header {entry!r}: {name!r} is not a valid HTTP header name (write 'Name' or 'Name: value')"
    if value is not None and _CONTROL.search(value):
        return f"header {entry!r}: the value contains control characters"
    return None
