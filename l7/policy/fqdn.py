"""DNS names and patterns of ``toFQDNs`` and ``rules.dns``: validation and matching.

Shared by validation and the DNS proxy, with Cilium 1.19's semantics (``pkg/fqdn/matchpattern``):

- Names compare case-insensitively and a trailing dot is optional. ``matchName`` is an exact name.
- In ``matchPattern``, ``*`` matches the characters of one label (``[-a-zA-Z0-9_]*``, possibly none,
  never a dot); a run of stars (``**``, ``***``) anywhere but the start is one ``*``.
- A pattern of stars only, with or without a trailing dot (``*``, ``**``, ``*.``, ``**.``), matches
  every name.
- A leading run of two or more stars followed by a dot (``**.``, ``***.``) matches one or more whole
  labels: ``**.example.com`` matches ``a.example.com`` and ``a.b.example.com``, not ``example.com``.

Validation accepts what Cilium's CRD schema (``^([-a-zA-Z0-9_*]+[.]?)+$``, at most 255 characters) and
its ``matchpattern.Validate`` accept; label lengths are not checked in patterns (Cilium does not).
Matching never backtracks exponentially: a pattern with two separate stars in one label (``*a*``) is
matched with RE2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import re2

MAX_NAME_LENGTH = 255
MAX_LABEL_LENGTH = 63

_NAME_CHARS = re.compile(r"[-a-zA-Z0-9_.]+")
_PATTERN_CHARS = re.compile(r"[-a-zA-Z0-9_.*]+")
_LABEL_CHAR = "[-a-z0-9_]"
_STARS_ONLY = re.compile(r"\*+")
"""After :func:`normalize`: a pattern that matches every name."""
_SUBDOMAINS = re.compile(r"\*{2,}\.")
"""At the start of a pattern: one or more whole labels."""
_STARS = re.compile(r"\*+")


def normalize(name: str) -> str:
    """Lower case, without the trailing dot: the form names are compared in."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _empty_label(text: str, what: str) -> str | None:
    body = text[:-1] if text.endswith(".") else text
    if any(label == "" for label in body.split(".")):
        return f"{what} {text!r} has an empty label"
    return None


def validate_name(name: str) -> str | None:
    """Why ``name`` is not a valid ``matchName``, or ``None``."""
    if not name:
        return "name must not be empty"
    if not _NAME_CHARS.fullmatch(name):
        return f"name {name!r} may only contain letters, digits, '-', '_' and '.'"
    if len(name) > MAX_NAME_LENGTH:
        return f"name is longer than {MAX_NAME_LENGTH} characters"
    problem = _empty_label(name, "name")
    if problem:
        return problem
    if any(len(label) > MAX_LABEL_LENGTH for label in normalize(name).split(".")):
        return f"name {name!r} has a label longer than {MAX_LABEL_LENGTH} characters"
    return None


def validate_pattern(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid ``matchPattern``, or ``None``."""
    if not pattern:
        return "pattern must not be empty"
    if not _PATTERN_CHARS.fullmatch(pattern):
        return f"pattern {pattern!r} may only contain letters, digits, '-', '_', '.' and '*'"
    if len(pattern) > MAX_NAME_LENGTH:
        return f"pattern is longer than {MAX_NAME_LENGTH} characters"
    return _empty_label(pattern, "pattern")


def pattern_regex(pattern: str) -> str:
    """The regular expression (whole-string, for :func:`normalize`-d names) of a valid ``matchPattern``."""
    text = normalize(pattern)
    if _STARS_ONLY.fullmatch(text):
        return ".*"
    prefix = ""
    lead = _SUBDOMAINS.match(text)
    if lead:
        prefix = rf"(?:{_LABEL_CHAR}+\.)+"
        text = text[lead.end() :]
    return prefix + f"{_LABEL_CHAR}*".join(re.escape(piece) for piece in _STARS.split(text))


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_AMBIGUOUS_LABEL = re.compile(r"\*+[^.*]+\*")
"""A pattern label with two ``*`` apart (``*a*``): Python's backtracking ``re`` takes time exponential in
their number on a name that does not match (``*a*a*a*a*a*a*a*b.test`` vs a 60-letter label: ~10 s), so
such patterns are matched with RE2 (linear time, ~10x the constant cost); all others with ``re``: there a
star never crosses a dot and has at most one literal after it in its label, so the work per name stays
small (polynomial in a name of at most 255 characters)."""


@dataclass(frozen=True)
class NameMatcher:
    """A compiled ``matchName`` or ``matchPattern``; :meth:`matches` takes any DNS name."""

    match_name: str | None = None
    match_pattern: str | None = None
    _regex: Any = field(init=False, repr=False, compare=False)  # re.Pattern[str] or an RE2 regex

    def __post_init__(self) -> None:
        if (self.match_name is None) == (self.match_pattern is None):
            raise ValueError("exactly one of match_name and match_pattern is required")
        if self.match_name is not None:
            regex = re.escape(normalize(self.match_name))
        else:
            assert self.match_pattern is not None
            regex = pattern_regex(self.match_pattern)
            if _AMBIGUOUS_LABEL.search(self.match_pattern):
                object.__setattr__(self, "_regex", re2.compile(regex, _RE2_OPTIONS))
                return
        object.__setattr__(self, "_regex", re.compile(regex, re.ASCII))

    @property
    def linear(self) -> bool:
        """Whether the compiled matcher is RE2 (no backtracking at all)."""
        return not isinstance(self._regex, re.Pattern)

    def matches(self, name: str) -> bool:
        """Whether the DNS ``name`` (any case, trailing dot optional) is selected."""
        return self._regex.fullmatch(normalize(name)) is not None


def match_name(name: str) -> NameMatcher:
    return NameMatcher(match_name=name)


def match_pattern(pattern: str) -> NameMatcher:
    return NameMatcher(match_pattern=pattern)
