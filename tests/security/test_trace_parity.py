"""``policy trace`` and a real Envoy agree on every request: the same requests go through the translator's
routes in Envoy (the lab of test_http_findings.py: client namespace → Envoy → backend, raw bytes) and
through :func:`l7.trace.evaluate_rules`, and both must allow or both deny.

The requests cover what trace re-implements of Envoy: methods, paths (query strings, dot segments,
percent-encodings, escaped slashes, repeated slashes, ``;``), hosts (case, ports, trailing dots), and
headers (present, absent, exact, empty, repeated, white space, name case).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from test_http_findings import DENIED, Lab, lab, one  # noqa: F401  (lab: the fixture, reused)

from l7.policy.model import HeaderMatch, HTTPRule, Mismatch
from l7.trace import HTTPRequest, evaluate_rules
from l7xds.translate import RuleSet

pytestmark = pytest.mark.root

RULES: RuleSet = (
    HTTPRule(method="GET", path="/public(/.*)?"),
    HTTPRule(method="GET|PUT", path=r"/query\?a=[0-9]+"),
    HTTPRule(method="POST", path="/submit", host="api.example.com"),
    HTTPRule(path="/svc", host=r".*\.svc\.local"),
    HTTPRule(method="GET", path="/headers", headers=("X-Token: abc",)),
    HTTPRule(method="GET", path="/present", headers=("X-Flag",)),
    HTTPRule(method="GET", path="/match", header_matches=(HeaderMatch(name="X-Token", value="abc"),)),
    HTTPRule(
        method="GET",
        path="/log",
        header_matches=(HeaderMatch(name="X-Token", value="abc", mismatch=Mismatch.LOG),),
    ),
    HTTPRule(method="GET", path=r"/api/.*\.json"),
    HTTPRule(method="PUT", path="/files/[^/]+"),
    HTTPRule(method="GET", path="/cookie", headers=("Cookie: a=1",)),
)
HOST = "10.215.2.2"


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    host: str = HOST
    headers: tuple[tuple[str, str], ...] = ()

    def payload(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}:{value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def __str__(self) -> str:
        extra = "".join(f" [{n}:{v}]" for n, v in self.headers)
        return f"{self.method} {self.target} (host {self.host}){extra}"


TOKEN = "X-Token"
CASES = [
    # methods
    *(Case(m, "/public") for m in ("GET", "get", "POST", "PUT", "DELETE")),
    Case("PUT", "/query?a=1"),
    # paths: query strings, dot segments, encodings, slashes, case
    *(
        Case("GET", p)
        for p in (
            "/public",
            "/public/",
            "/public/x",
            "/publicx",
            "/PUBLIC",
            "/public?x=1",
            "/public/?x=1",
            "/public/../private",
            "/public/./x",
            "/public/x/..",
            "/public/%2e%2e/private",
            "/public/%2E%2E/public",
            "/public/..%2fprivate",
            "/public/..%2Fpublic/x",
            "/public%2fx",
            "/public%5cx",
            "/public//x",
            "//public",
            "/%70ublic",
            "/public/%41",
            "/public/%7e",
            "/public/a%20b",
            "/public/%zz",
            "/public/x;y",
            "/public/%3bx",
            "/public/%253bx",
            "/public/%252e%252e/private",
            "/public/%252fx",
            "/public/%25",
            "/query?a=1",
            "/query?a=12",
            "/query?a=x",
            "/query?a=1&b=2",
            "/query",
            "/query%3fa=1",
            "/query?a=1/../x",
            "/api/x.json",
            "/api/x.json?y=1",
            "/api/x;.json",
            "/api/x%3B.json",
            "/api/a/../x.json",
            "/api/x%2ejson",
        )
    ),
    Case("PUT", "/files/a"),
    Case("PUT", "/files/a%2Fb"),
    Case("PUT", "/files/a/../b"),
    Case("PUT", "/files/%61"),
    # hosts: case, ports, trailing dots, suffixes
    *(
        Case("POST", "/submit", host=h)
        for h in (
            "api.example.com",
            "API.Example.COM",
            "api.example.com.",
            "api.example.com:8080",
            "api.example.com.:80",
            "api.example.com..",
            "api.example.com:",
            "other.example.com",
            "api.example.com.evil.com",
            "xapi.example.com",
            HOST,
        )
    ),
    *(Case("GET", "/svc", host=h) for h in ("a.svc.local", "A.SVC.LOCAL.:443", "svc.local", "a.svc.local.x")),
    # headers: exact, name case, white space, absent, repeated, empty
    *(
        Case("GET", path, headers=headers)
        for path in ("/headers", "/match", "/log")
        for headers in (
            ((TOKEN, " abc"),),
            (("x-token", "abc"),),
            ((TOKEN, "abc  "),),
            ((TOKEN, " ABC"),),
            ((TOKEN, " abcd"),),
            (),
            ((TOKEN, " abc"), (TOKEN, " abc")),
            ((TOKEN, " evil"), (TOKEN, " abc")),
            ((TOKEN, " abc"), (TOKEN, "")),
            ((TOKEN, " abc,abc"),),
            ((TOKEN, ""),),
        )
    ),
    *(
        Case("GET", "/present", headers=headers)
        for headers in ((("X-Flag", " 1"),), (("X-Flag", ""),), (), (("X-Flag", " a"), ("x-flag", " b")))
    ),
    *(
        Case("GET", "/cookie", headers=headers)
        for headers in (
            (("Cookie", " a=1"),),
            (("Cookie", " a=1"), ("Cookie", " b=2")),
            (("Cookie", " a=1; b=2"),),
            (("Cookie", " b=2"),),
        )
    ),
    Case("CONNECT", "api.example.com:443", host="api.example.com:443"),
]


def envoy_verdict(proxy: Lab, case: Case) -> str:
    """``allow`` (the backend answered), ``deny`` (403 Access denied) or ``reject NNN`` (Envoy refused
    the request as malformed; it never reaches a route, so it counts as denied)."""
    status, body = one(proxy, case.payload())
    if status == 200:
        assert body.startswith(b"backend "), (str(case), body)
        return "allow"
    if (status, body) == DENIED:
        return "deny"
    return f"reject {status}"


def trace_allows(case: Case) -> bool:
    request = HTTPRequest(case.method, case.target, case.host, case.headers)
    return evaluate_rules(RULES, request)[0] is not None


def test_trace_agrees_with_envoy(lab: Lab) -> None:  # noqa: F811  (the imported fixture)
    lab.apply(RULES)
    with ThreadPoolExecutor(4) as pool:
        envoy = list(pool.map(lambda case: envoy_verdict(lab, case), CASES))
    verdicts = {str(case): (e, trace_allows(case)) for case, e in zip(CASES, envoy, strict=True)}
    assert sum(e == "allow" for e, _ in verdicts.values()) >= 20, "too few allowed requests to be a check"
    disagree = {case: f"envoy {e}, trace {t}" for case, (e, t) in verdicts.items() if (e == "allow") != t}
    assert disagree == {}
