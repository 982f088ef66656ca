"""The demo's scenario file and expectation matching (pure: no lab)."""

from __future__ import annotations

from pathlib import Path

import pytest

from l7.demo import DEFAULT_SCENARIOS, ScenarioError, check, classify, load_scenarios, parse_scenarios
from l7.demo.scenarios import Expect, Step
from l7.policy.documents import load_paths

BASE = DEFAULT_SCENARIOS.parent


def test_default_scenarios_load_and_cover_every_seed_policy() -> None:
    scenarios = load_scenarios(DEFAULT_SCENARIOS)
    used = {path.name for phase in scenarios.phases for path in scenarios.policy_paths(phase)}
    seeds = {p.name for p in scenarios.policy_dir.glob("*.yaml")}
    assert seeds - used == set(), "every seed policy is played"
    for phase in scenarios.phases:
        paths = scenarios.policy_paths(phase)
        if paths:
            assert not load_paths(paths).errors, phase.name


def test_every_problem_is_reported_with_its_field_path(tmp_path: Path) -> None:
    data = {
        "topology": "nope.yaml",
        "policies": ".",
        "phases": [
            {
                "name": "a",
                "steps": [
                    {"run": "curl x", "expect": {"outcome": "timeout"}},
                    {"pod": "p", "run": "curl x", "expect": {"outcome": "http", "rcode": "NOERROR"}},
                ],
            },
            {"name": "b", "steps": [{"pod": "p", "run": "x", "expect": {"outcome": "teleport"}}]},
        ],
    }
    with pytest.raises(ScenarioError) as err:
        parse_scenarios(data, "s.yaml", tmp_path)
    text = "\n".join(err.value.problems)
    assert "phases[0].steps[0]: Value error, give exactly one of 'pod' and 'node'" in text
    assert "phases[0].steps[1].expect: Value error, outcome 'http' takes no rcode" in text
    assert "phases[1].steps[0].expect.outcome" in text


def test_missing_files_are_reported(tmp_path: Path) -> None:
    data = {
        "topology": "t.yaml",
        "policies": ".",
        "phases": [
            {
                "name": "a",
                "policies": ["x.yaml"],
                "steps": [{"pod": "p", "run": "true", "expect": {"outcome": "exit", "exit": 0}}],
            }
        ],
    }
    with pytest.raises(ScenarioError) as err:
        parse_scenarios(data, "s.yaml", tmp_path)
    assert [p.split(":")[0] for p in err.value.problems] == ["topology", "phases[0].policies[0]"]


def test_templates_and_selection() -> None:
    step = Step(
        pod="a", run="curl -m 2 http://{ip:webpod-1}/ {node:k8s-ctr}", expect=Expect(outcome="timeout")
    )
    assert step.argv({"ip:webpod-1": "10.0.0.5", "node:k8s-ctr": "10.0.0.1"})[-2:] == [
        "http://10.0.0.5/",
        "10.0.0.1",
    ]
    with pytest.raises(KeyError):
        step.argv({})
    scenarios = load_scenarios(DEFAULT_SCENARIOS)
    picked = scenarios.select("mediabot")
    assert picked
    for phase, steps in picked:
        assert "mediabot" in phase.name or all(s.pod == "mediabot" for s in steps)
    assert scenarios.select("no-such-thing-anywhere") == []


HTTP_OUT = "HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\n\r\nAccess denied\r\n"
DIG_OK = """;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1
;; ANSWER SECTION:
google.com.		60	IN	A	10.200.250.10
"""


@pytest.mark.parametrize(
    ("argv", "exit", "out", "outcome"),
    [
        (["curl", "-si", "x"], 0, HTTP_OUT, "http"),
        (["curl", "-si", "x"], 28, "", "timeout"),
        (["curl", "-si", "x"], 6, "", "unresolved"),
        (["curl", "-si", "x"], 7, "", "refused"),
        (["curl", "-s", "x"], 0, "no status line", "error"),
        (["dig", "x"], 0, DIG_OK, "dns"),
        (["dig", "x"], 9, ";; connection timed out", "timeout"),
        (["ping", "-c", "1", "x"], 0, "", "reply"),
        (["ping", "-c", "1", "x"], 1, "", "timeout"),
        (["true"], 0, "", "exit"),
    ],
)
def test_classify(argv: list[str], exit: int, out: str, outcome: str) -> None:
    assert classify(argv, exit, out, "").outcome == outcome


def test_check() -> None:
    obs = classify(["curl", "-si", "x"], 0, HTTP_OUT, "")
    assert obs.status == 403 and obs.body == "Access denied\n"
    assert check(Expect(outcome="http", status=403, body="Access denied"), obs) == (True, "")
    ok, why = check(Expect(outcome="http", status=200), obs)
    assert not ok and "status 403" in why
    ok, why = check(Expect(outcome="timeout"), obs)
    assert not ok and why.startswith("expected timed out, got 403")
    dns = classify(["dig", "x"], 0, DIG_OK, "")
    assert dns.ips == ("10.200.250.10",)
    assert check(Expect(outcome="dns", rcode="noerror", answer=True), dns)[0]
    assert not check(Expect(outcome="dns", rcode="REFUSED"), dns)[0]
    assert not check(Expect(outcome="dns", answer=False), dns)[0]
    redirect = "HTTP/1.1 301 Moved\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody"
    assert classify(["curl", "-siL", "x"], 0, redirect, "").status == 200
