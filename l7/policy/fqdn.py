"""DNS names and patterns of ``toFQDNs`` and ``rules.dns``: validation and matching.

Shared by validation and the DNS proxy. Names compare case-insensitively and a trailing dot is
optional. ``matchName`` is an exact name. In ``matchPattern``, ``*`` matches the characters of one
label (``[-a-zA-Z0-9_]*``, never a dot) and ``*`` alone matches every name; a leading ``**.`` matches
one or more whole labels (elsewhere ``**`` behaves like ``*``). So ``*.example.com`` matches
``a.example.com`` but neither ``example.com`` nor ``a.b.example.com``, which ``**.example.com`` matches.
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
_LABEL_CHARS = "[-a-z0-9_]"
_SUBDOMAINS = "**."


def normalize(name: str) -> str:
    """Lower case, without the trailing dot: the form names are compared in."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _check_labels(text: str, what: str) -> str | None:
    if len(text) > MAX_NAME_LENGTH:
        return f"{what} is longer than {MAX_NAME_LENGTH} characters"
    body = text[:-1] if text.endswith(".") else text
    labels = body.split(".")
    if any(label == "" for label in labels):
        return f"{what} {text!r} has an empty label"
    for label in labels:
        if len(label) > MAX_LABEL_LENGTH:
            return f"{what} {text!r} has a label longer than {MAX_LABEL_LENGTH} characters"
    return None


def validate_name(name: str) -> str | None:
    """Why ``name`` is not a valid ``matchName``, or ``None``."""
    if not name:
        return "name must not be empty"
    if not _NAME_CHARS.fullmatch(name):
        return f"name {name!r} may only contain letters, digits, '-', '_' and '.'"
    return _check_labels(name, "name")


def validate_pattern(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid ``matchPattern``, or ``None``."""
    if not pattern:
        return "pattern must not be empty"
    if not _PATTERN_CHARS.fullmatch(pattern):
        return f"pattern {pattern!r} may only contain letters, digits, '-', '_', '.' and '*'"
    problem = _check_labels(pattern, "pattern")
    if problem:
        return problem
    labels = normalize(pattern).split(".")
    for position, label in enumerate(labels):
        if label == "**" and (position != 0 or len(labels) == 1):
            return f"pattern {pattern!r}: '**.' is only allowed as the leading label"
    return None


def _pattern_regex(pattern: str) -> str:
    pattern = normalize(pattern)
    if pattern == "*":
        return ".*"
    prefix = ""
    if pattern.startswith(_SUBDOMAINS) and len(pattern) > len(_SUBDOMAINS):
        prefix = rf"(?:{_LABEL_CHARS}+\.)+"
        pattern = pattern[len(_SUBDOMAINS) :]
    parts = [re.escape(piece) for piece in re.split(r"\*+", pattern)]
    return prefix + f"{_LABEL_CHARS}*".join(parts)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_AMBIGUOUS_LABEL = re.compile(r"\*+[^.*]+\*")
"""A pattern label with two ``*`` apart (``*a*``): Python's backtracking ``re`` takes time exponential in
their number on a name that does not match (``*a*a*a*a*a*a*a*b.test`` vs a 60-letter label: ~10 s), so
such patterns are matched with RE2 (linear time, ~10x the constant cost); all others with ``re``."""


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
            regex = _pattern_regex(self.match_pattern)
            if _AMBIGUOUS_LABEL.search(self.match_pattern):
                object.__setattr__(self, "_regex", re2.compile(regex, _RE2_OPTIONS))
                return
        object.__setattr__(self, "_regex", re.compile(regex, re.ASCII))

    def matches(self, name: str) -> bool:
        """Whether the DNS ``name`` (any case, trailing dot optional) is selected."""
        return self._regex.fullmatch(normalize(name)) is not None


def match_name(name: str) -> NameMatcher:
    return NameMatcher(match_name=name)


def match_pattern(pattern: str) -> NameMatcher:
    return NameMatcher(match_pattern=pattern)
