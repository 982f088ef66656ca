"""``serverNames`` (TLS SNI) patterns, as Cilium's CRD describes them, and the RE2 regex Envoy matches.

- ``*`` matches zero or more DNS characters of one label (``[-a-z0-9_]``, never a dot), anywhere;
- a leading ``**.`` matches one or more whole labels (``**.example.com``: ``a.example.com`` and
  ``a.b.example.com``, not ``example.com``);
- ``*`` alone matches every name.

Names compare case-insensitively and a trailing dot is ignored (in the pattern and in the SNI).
"""

from __future__ import annotations

import re

from l7.policy.regex import re2_error

MAX_LENGTH = 255
_PATTERN = re.compile(r"^([-a-zA-Z0-9_*]+[.]?)+$")  # Cilium's CRD pattern for serverNames items
_LABEL = "[-a-z0-9_]"
_SUBDOMAINS = "**."


def validate(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid serverNames item, or None."""
    if not pattern:
        return "must not be empty"
    if len(pattern) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if not _PATTERN.match(pattern):
        return "may only hold letters, digits, '-', '_', '*' and dots between labels"
    # Envoy matches the SNI (and, when intercepting, the Host) with RE2 under a program-size limit; a
    # regex over it is a NACK that would hold back every later change of the node's Envoy
    problem = re2_error(authority_regex(pattern))
    if problem:
        return f"too long for Envoy's regex limit ({problem.split(':')[0]})"
    return None


def regex(pattern: str) -> str:
    """The RE2 regex (whole value, case-insensitive, optional trailing dot) of a valid pattern."""
    text = pattern.lower().rstrip(".")
    if text == "*":
        return r"(?i)[-a-z0-9_.]+\.?"
    prefix = ""
    if text.startswith(_SUBDOMAINS):
        prefix, text = f"(?:{_LABEL}+\\.)+", text[len(_SUBDOMAINS) :]
    parts = re.split(r"(\*+)", text)
    body = "".join(f"{_LABEL}*" if part.startswith("*") else re.escape(part) for part in parts if part)
    return f"(?i){prefix}{body}\\.?"


def authority_regex(pattern: str) -> str:
    """The regex a request's ``:authority`` must match on an intercepting port: the name, a port."""
    return f"{regex(pattern)}(?::[0-9]+)?"
