"""RE2 syntax checks for the HTTP rule fields Envoy matches as regexes (method, path, host).

Envoy compiles these with RE2, so Python-only syntax (lookarounds, backreferences) must be rejected
here rather than by Envoy's NACK.
"""

from __future__ import annotations

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 otherwise prints every rejected pattern on stderr


def re2_error(pattern: str) -> str | None:
    """The reason ``pattern`` is not a valid RE2 regex, or ``None`` when it compiles."""
    try:
        re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"invalid RE2 regex: {detail}"
    return None
