"""Name matching shared with the DNS proxy: matchName, matchPattern, '*' and a leading '**.'."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l7.policy.fqdn import NameMatcher, match_name, match_pattern, validate_name, validate_pattern


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "A.EXAMPLE.com.", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "aexample.com", False),
        ("**.example.com", "a.example.com", True),
        ("**.example.com", "a.b.example.com", True),
        ("**.example.com", "example.com", False),
        ("*", "anything.at.all", True),
        ("*", "com", True),
        ("a*.com", "a.com", True),
        ("a*.com", "abc.com", True),
        ("a*.com", "b.com", False),
        ("a**b.com", "axxb.com", True),
        ("a**b.com", "a.b.com", False),
        ("example.com", "example.com.", True),
        ("example.com.", "EXAMPLE.COM", True),
        ("sub.*.com", "sub.x.com", True),
        ("sub.*.com", "sub.x.y.com", False),
    ],
)
def test_patterns(pattern: str, name: str, expected: bool) -> None:
    assert match_pattern(pattern).matches(name) is expected


def test_match_name() -> None:
    matcher = match_name("API.github.com.")
    assert matcher.matches("api.github.com") and matcher.matches("api.GITHUB.com.")
    assert not matcher.matches("xapi.github.com") and not matcher.matches("api.github.co")
    assert not match_name("a.b").matches("axb")  # the dot is literal
    with pytest.raises(ValueError):
        NameMatcher()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("a..b", "empty label"),
        (".a", "empty label"),
        ("a b", "may only contain"),
        ("a*.b", "may only contain"),
        ("a" * 64, "longer than 63"),
        ("a." * 128, "longer than 255"),
    ],
)
def test_invalid_names(name: str, problem: str) -> None:
    assert problem in (validate_name(name) or "")


def test_valid_names_and_patterns() -> None:
    for name in ("a", "a.", "x_y-z.example.com", "a" * 63 + ".com"):
        assert validate_name(name) is None
    for pattern in ("*", "*.a.com", "**.a.com", "a*b.c*", "a**.b", "**", "a.**.b", "a.**"):
        assert validate_pattern(pattern) is None
    for pattern in ("a..b", "a/b", ".", ""):
        assert validate_pattern(pattern) is not None


LABEL = st.text(alphabet="abcxyz019-_", min_size=1, max_size=8)
NAMES = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


def _reference(pattern: str, name: str) -> bool:
    """Label by label: the obvious reading of the rules, independent of the regex translation."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if set(pattern) == {"*"}:
        return True
    p_labels, n_labels = pattern.split("."), name.split(".")
    if p_labels[0] == "**" and len(p_labels) > 1:
        rest = p_labels[1:]
        return len(n_labels) > len(rest) and all(
            _label_matches(p, n) for p, n in zip(rest, n_labels[len(n_labels) - len(rest) :], strict=True)
        )
    return len(p_labels) == len(n_labels) and all(
        _label_matches(p, n) for p, n in zip(p_labels, n_labels, strict=True)
    )


def _label_matches(pattern: str, label: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, re.split(r"\*+", pattern))), label) is not None


@given(NAMES, st.data())
def test_pattern_matching_agrees_with_reference(name: str, data: st.DataObject) -> None:
    labels = name.split(".")
    # derive a pattern: some labels replaced by '*' or partly starred, optionally a '**.' prefix
    pattern_labels = [
        data.draw(st.sampled_from([label, "*", label[:1] + "*", "*" + label[-1:], "x*z"])) for label in labels
    ]
    if data.draw(st.booleans()) and len(pattern_labels) > 1:
        pattern_labels = ["**", *pattern_labels[data.draw(st.integers(1, len(pattern_labels) - 1)) :]]
    pattern = ".".join(pattern_labels)
    other = data.draw(NAMES)
    for candidate in (name, other, name.upper() + ".", "q." + name):
        assert match_pattern(pattern).matches(candidate) is _reference(pattern, candidate), (
            pattern,
            candidate,
        )


@given(NAMES)
def test_name_properties(name: str) -> None:
    assert validate_name(name) is None or len(name) > 255
    assert match_name(name).matches(name.upper() + ".")
    assert match_pattern(name).matches(name)
    assert match_pattern("*." + name).matches("w." + name)
    assert not match_pattern("*." + name).matches(name)
    assert match_pattern("**." + name).matches("a.b." + name)
    assert match_pattern("*").matches(name)
    assert not match_name(name).matches("x" + name)
