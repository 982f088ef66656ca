"""matchPattern parity with Cilium 1.19 (``pkg/fqdn/matchpattern``): the cases of Cilium's own tests.

The names are written as Cilium's tests write them (FQDN form, trailing dot). Cases that only exist in
Cilium's tests of the unmerged ``**``-anywhere proposal (cilium#42871) are kept with the expectation of
the merged rule (cilium#43420, in 1.19): ``**`` is special only as a leading ``**.``; elsewhere it is
``*``. Differences from Cilium, documented in docs/policy-reference.md, are marked ``DIFF``.
"""

from __future__ import annotations

import pytest

from l7.policy.fqdn import match_pattern, pattern_regex, validate_pattern

CASES: list[tuple[str, list[str], list[str]]] = [
    # (pattern, names it matches, names it does not match)
    ("cilium.io.", ["cilium.io."], ["", "anysub.cilium.io.", "anysub.ci.io.", "anysub.ciliumandmore.io."]),
    ("*.cilium.io.", ["anysub.cilium.io."], ["", "cilium.io.", "anysub.ci.io.", "anysub.ciliumandmore.io."]),
    (
        "*.ci*.io.",
        ["anysub.cilium.io.", "anysub.ci.io.", "anysub.ciliumandmore.io."],
        ["", "ci.io", "cilium.io.", "service.namesace.svc.cluster.local."],
    ),
    # DIFF: Cilium's toFQDNs regex for '*' also refuses "", names with an empty label and names without
    # the final dot; l7gate's '*' (like Cilium's DNS proxy for rules.dns '*') matches every name.
    (
        "*",
        [
            ".",
            "io.",
            "cilium.io.",
            "svc.cluster.local.",
            "service.namesace.svc.cluster.local.",
            "_foobar._tcp.cilium.io.",
        ],
        [],
    ),
    ("_foobar._tcp.cilium.io.", ["_foobar._tcp.cilium.io."], ["", "_tcp.cilium.io.", "cilium.io."]),
    ("*.*.cilium.io.", ["_foobar._tcp.cilium.io."], ["", "cilium.io.", "a.cilium.io.", "a.b.c.cilium.io."]),
    # a leading '**.': one or more whole labels
    (
        "**.cilium.io.",
        [
            "anysub.cilium.io.",
            "_foobar._tcp.cilium.io.",
            "sub11.sub22.sub33._foobar._tcp.cilium.io.",
            "sub.cilium.io",
        ],
        ["", "cilium.io.", "anysub.ci.io.", "anysub.ciliumandmore.io.", "1._foobar_tcp.cilium.trio."],
    ),
    (
        "**.ci*.io.",
        [
            "anysub.cilium.io.",
            "anysub.ci.io.",
            "1.anysub.ciliumandmore.io.",
            "service.namesace.svc.ciuster.io.",
        ],
        ["", "cilium.io.", "service.namesace.svc..ciblaster.io."],
    ),
    (
        "**.*.io.",
        [
            "anysub.cilium.io.",
            "anysub.ci.io.",
            "anysub.ciliumandmore.io.",
            "service.namesace.svc.ciuster.io.",
        ],
        ["", "io.", "..cilium.io.", "cilium.io.", "service..namesace.svc.cluster.io."],
    ),
    ("***.cilium.io", ["a.cilium.io", "a.b.cilium.io"], ["cilium.io"]),  # more stars, same prefix
    # '**' and '**.' alone match every name
    ("**", [".", "io.", "cilium.io.", "svc.cluster.local.", "_foobar._tcp.cilium.io."], []),
    ("**.", ["io.", "cilium.io.", "service.namesace.svc.cluster.local."], []),
    ("*.", ["io.", "a.b.c."], []),
    # '**' anywhere else is '*' (one label's characters): the merged rule, not cilium#42871's
    ("*.**.cilium.io.", ["_foobar._tcp.cilium.io."], ["", "_tcp.cilium.io.", "2._foobar._tcp.cilium.io."]),
    ("*.**.io.", ["anysub.cilium.io."], ["", "io.", "cilium.io", "service.namesace.svc.ciuster.io."]),
    ("1.**.*io.", ["1._foobar.trio."], ["", "1._foobar._tcp.cilium.io.", "1.2._foobar._tcp.cilium.io."]),
    ("1.**.cilium.io.", ["1._foobar.cilium.io."], ["", "_tcp.cilium.io.", "1.2._foobar.cilium.io."]),
    ("_sub.**.io.", ["_sub.x.io."], ["_sub.io.", "_sub.a.b.io."]),
    ("**cilium.io", ["cilium.io", "subcilium.io"], ["www.cilium.io"]),  # no dot after the stars
    ("a**b.com", ["ab.com", "axxb.com"], ["a.b.com"]),
    # the CRD description's examples
    ("*cilium.io", ["cilium.io", "subcilium.io", "sub-cilium.io"], ["www.cilium.io", "blog.cilium.io"]),
    (
        "sub*.cilium.io",
        ["sub.cilium.io", "subdomain.cilium.io"],
        ["www.cilium.io", "cilium.io", "google.com"],
    ),
    ("**.cilium.io", ["app.cilium.io", "test.app.cilium.io"], ["cilium.io"]),
]


@pytest.mark.parametrize(("pattern", "accept", "reject"), CASES, ids=[case[0] for case in CASES])
def test_cilium_cases(pattern: str, accept: list[str], reject: list[str]) -> None:
    assert validate_pattern(pattern) is None
    matcher = match_pattern(pattern)
    assert [name for name in accept if not matcher.matches(name)] == []
    assert [name for name in reject if matcher.matches(name)] == []


@pytest.mark.parametrize(
    ("pattern", "regex"),
    [
        ("cilium.io.", r"cilium\.io"),
        ("*.cilium.io.", r"[-a-z0-9_]*\.cilium\.io"),
        ("**.cilium.io.", r"(?:[-a-z0-9_]+\.)+cilium\.io"),
        ("_sub.**.io.", r"_sub\.[-a-z0-9_]*\.io"),
        ("**", ".*"),
        ("*", ".*"),
        ("**.", ".*"),
        ("*.", ".*"),
        ("***.A.io", r"(?:[-a-z0-9_]+\.)+a\.io"),
    ],
)
def test_translation(pattern: str, regex: str) -> None:
    """Cilium's conversion table, for names in l7gate's compared form (lower case, no final dot)."""
    assert pattern_regex(pattern) == regex


@pytest.mark.parametrize(
    "pattern",
    [
        "**",
        "**.",
        "*.",
        "***",
        "a.**.b",
        "a.**",
        "**.**.cilium.io",
        "cilium.**.**",
        "*-*.a_b.c",
        "a" * 64 + ".com",
    ],
)
def test_accepted_like_cilium(pattern: str) -> None:
    """Every pattern Cilium's schema (^([-a-zA-Z0-9_*]+[.]?)+$, ≤255) and Validate accept."""
    assert validate_pattern(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        (".", "empty label"),
        (".a.com", "empty label"),
        ("a..com", "empty label"),
        ("a.com..", "empty label"),
        ("a b", "may only contain"),
        ("a/b", "may only contain"),
        ("[a].com", "may only contain"),
        ("*" * 256, "longer than 255"),
    ],
)
def test_refused_like_cilium_schema(pattern: str, problem: str) -> None:
    assert problem in (validate_pattern(pattern) or "")


def test_ambiguous_patterns_use_re2() -> None:
    """Two stars apart in one label would backtrack in Python's ``re``: those go to RE2."""
    assert match_pattern("*a*b*.test").linear
    assert match_pattern("**.x*y*.test").linear
    assert not match_pattern("**.a*.test").linear
    assert match_pattern("*a*a*a*a*a*a*a*b.test").matches("a" * 60 + "b.test")
    assert not match_pattern("*a*a*a*a*a*a*a*b.test").matches("a" * 60 + ".test")
