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


#: Paths that common backends resolve to another path than the one Envoy checked; the translator refuses
#: them before any rule is looked at (a route whose ``safe_regex`` is matched against the path without the
#: query, after Envoy's normalisation, which already resolved ``.``/``..``, decoded ``%2e`` and unescaped
#: ``%2F``/``%5C``), and ``policy trace`` refuses them too:
#:
#: - any ``;``: Tomcat, Jetty and Spring drop ``;parameters`` from each segment, so ``/public/..;x/admin``
#:   is ``/admin`` to them and ``/api/secret;.json`` (allowed by a rule ``/api/.*\\.json``) is
#:   ``/api/secret``;
#: - an encoded ``;`` (``%3B``): Spring decodes before it drops parameters (``/public/..%3Bx/admin``);
#: - double-encoded ``.``, ``/``, ``\\`` or ``;`` (``%252e``, ``%252f``, ``%255c``, ``%253b``), for backends
#:   that decode twice.
AMBIGUOUS_PATH = r".*(?:;|%3[bB]|%25(?:2[eEfF]|5[cC]|3[bB])).*"


def envoy_host_regex(host: str) -> str:
    """The ``:authority`` regex Envoy gets for a ``host`` rule (the translator's routes and ``policy trace``
    both use it): any case, an optional trailing dot and an optional ``:port``."""
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
