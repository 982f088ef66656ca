"""trace's model of what Envoy's listener does to a request before the routes (the real-Envoy check is
tests/security/test_trace_parity.py)."""

from __future__ import annotations

import pytest

from l7.policy.model import HTTPRule
from l7.trace import HTTPRequest, envoy_path, evaluate_rules, joined_headers


@pytest.mark.parametrize(
    ("target", "seen"),
    [
        ("/public", "/public"),
        ("/public/../private", "/private"),
        ("/public/%2e%2E/private", "/private"),
        ("/public/..%2fprivate", "/private"),
        ("/public%5cx", "/public/x"),
        ("//public//x", "/public/x"),
        ("/%70ublic/%7e", "/public/~"),
        ("/public/x/..", "/public/"),
        ("/a/%3b/%25", "/a/%3b/%25"),
        ("/q?a=1/../x//y", "/q?a=1/../x//y"),
    ],
)
def test_envoy_path(target: str, seen: str) -> None:
    assert envoy_path(target) == seen


def test_joined_headers() -> None:
    headers = (("X-Token", " evil "), ("x-token", "abc"), ("Cookie", "a=1"), ("cookie", "b=2"))
    assert joined_headers(headers) == {"x-token": "evil,abc", "cookie": "a=1; b=2"}


def test_refused_before_the_rules() -> None:
    allow_all: tuple[HTTPRule, ...] = ()
    assert evaluate_rules(allow_all, HTTPRequest("GET", "/x"))[0] == -1
    for request in (
        HTTPRequest("CONNECT", "a:443"),
        HTTPRequest("GET", "/x;y"),
        HTTPRequest("GET", "/%253b"),
    ):
        index, notes = evaluate_rules(allow_all, request)
        assert index is None and notes, request
