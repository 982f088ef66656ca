"""RE2 syntax checks for the HTTP rule fields Envoy matches as regexes (method, path, host).

Envoy compiles these with RE2, so Python-only syntax (lookarounds, backreferences) must be rejected
here rather than by Envoy's NACK.
"""

from __future__ import annotations

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 otherwise prints every rejected pattern on stderr


MAX_PROGRAM_SIZE = 100
"""Envoy's limit on a regex's RE2 program size (runtime ``re2.max_program_size.error_level``, default
100). Envoy rejects a route configuration holding a larger one (a NACK: the node keeps its previous
HTTP policy, for *every* policy on it), so validation rejects it first. ``/[a-z]{0,50}`` is 105."""


def envoy_host_regex(host: str) -> str:
    """The ``:authority`` regex Envoy gets for a ``host`` rule: the same wrapping as
    ``xds.translate.host_regex`` (tests/security/test_fuzz_policy.py checks that they agree)."""
    core = host.removeprefix("^")
    if core.endswith("$") and not core.endswith("\\$"):
        core = core[:-1]
    return rf"(?i:{core})\.?(?::[0-9]+)?"


def re2_error(pattern: str, envoy_form: str | None = None) -> str | None:
    """The reason ``pattern`` is not a valid RE2 regex or is too large for Envoy (its ``envoy_form``,
    the regex Envoy compiles, when that differs), or ``None``."""
    try:
        size = re2.compile(pattern, _OPTIONS).programsize
        if envoy_form is not None:
            size = re2.compile(envoy_form, _OPTIONS).programsize
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"invalid RE2 regex: {detail}"
    if size > MAX_PROGRAM_SIZE:
        return (
            f"RE2 program size {size} is larger than Envoy's limit of {MAX_PROGRAM_SIZE}: "
            "use fewer or smaller counted repetitions ({n,m}) and alternatives"
        )
    return None
