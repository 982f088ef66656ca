"""The demo's scenario file and expectation matching (pure: no lab)."""

from __future__ import annotations

from pathlib import Path

import pytest

from l7.demo import DEFAULT_SCENARIOS, ScenarioError, check, classify, load_scenarios, parse_scenarios
from l7.demo.runner import DemoReport, StepResult
from l7.demo.scenarios import Expect, Step
from l7.policy.documents import load_paths

BASE = DEFAULT_SCENARIOS.parent


SEED_SCENARIOS, SEED_PHASES = 57, 13


def test_default_scenarios_load_and_cover_every_seed_policy() -> None:
    scenarios = load_scenarios(DEFAULT_SCENARIOS)
    used = {path for phase in scenarios.phases for path in scenarios.policy_paths(phase)}
    seeds = set(scenarios.policy_dir.glob("*.yaml"))
    assert seeds - used == set(), "every seed policy is played"
    assert scenarios.extra_dir is not None
    assert set(scenarios.extra_dir.glob("*.yaml")) - used == set(), "every policy beyond the seeds is played"
    for phase in scenarios.phases:
        paths = scenarios.policy_paths(phase)
        if paths:
            assert not load_paths(paths).errors, phase.name
        # seed phases use only seed policies, the others only policies beyond the seeds
        assert {p.parent for p in paths} <= {scenarios.extra_dir if phase.extra else scenarios.policy_dir}


def test_seed_scenarios_come_first_and_the_others_are_marked() -> None:
    phases = load_scenarios(DEFAULT_SCENARIOS).phases
    seed = [p for p in phases if not p.extra]
    extra = [p for p in phases if p.extra]
    assert phases == seed + extra
    assert (len(seed), sum(len(p.steps) for p in seed)) == (SEED_PHASES, SEED_SCENARIOS)
    assert [p.name for p in extra] == [
        "beyond the seeds: serverNames (SNI) on a shared address",
        "beyond the seeds: TLS interception",
        "beyond the seeds: host policy (nodeSelector)",
    ]
    for phase in extra:
        assert phase.note.startswith("Not from the seed posts."), phase.name


def test_extra_phases_need_their_policy_directory(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("nodes: []\n")
    phase = {
        "name": "x",
        "extra": True,
        "policies": ["p.yaml"],
        "steps": [{"pod": "p", "run": "true", "expect": {"outcome": "exit", "exit": 0}}],
    }
    with pytest.raises(ScenarioError) as err:
        parse_scenarios({"topology": "t.yaml", "policies": ".", "phases": [phase]}, "s.yaml", tmp_path)
    assert err.value.problems == [
        "<top>: Value error, phases with 'extra: true' and policies need 'extra_policies'"
    ]
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "p.yaml").write_text("")
    data = {"topology": "t.yaml", "policies": ".", "extra_policies": "extra", "phases": [phase]}
    scenarios = parse_scenarios(data, "s.yaml", tmp_path)
    assert scenarios.policy_paths(scenarios.phases[0]) == [tmp_path / "extra" / "p.yaml"]


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
        pod="a",
        run="curl -m 2 --cacert {cert:lab-ca} http://{ip:webpod-1}/ {node:k8s-ctr}",
        expect=Expect(outcome="timeout"),
    )
    ips = {"ip:webpod-1": "10.0.0.5", "node:k8s-ctr": "10.0.0.1", "cert:lab-ca": "/s/certs/lab-ca.crt"}
    assert step.argv(ips)[-4:] == ["--cacert", "/s/certs/lab-ca.crt", "http://10.0.0.5/", "10.0.0.1"]
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
        (["curl", "-si", "https://x/"], 35, "", "handshake"),
        (["curl", "-si", "https://x/"], 56, "", "handshake"),
        (["curl", "-si", "http://x/"], 56, "", "error"),  # a reset, not a handshake
        (["curl", "-si", "https://x/"], 60, "", "untrusted"),
        (
            ["openssl", "s_client", "-connect", "x:443"],
            1,
            "CONNECTED(00000003)\n---\nno peer certificate",
            "handshake",
        ),
        (["openssl", "s_client", "-connect", "x:443"], 0, "-----BEGIN CERTIFICATE-----\n", "exit"),
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


def test_report_counts_seed_scenarios_apart() -> None:
    def row(passed: bool = True, extra: bool = False) -> StepResult:
        return StepResult("p", "pod", "curl x", "200", "200", passed, "", 0.1, extra)

    report = DemoReport(lab="l", results=[row(), row(), row(extra=True), row(False, extra=True)])
    assert report.summary() == "2/2 seed scenarios + 1/2 beyond the seeds passed"
    as_dict = report.as_dict()
    assert (as_dict["seed"], as_dict["extra"]) == ({"total": 2, "failed": 0}, {"total": 2, "failed": 1})
    assert as_dict["results"][2]["extra"] is True and not report.passed
    assert DemoReport(lab="l", results=[row()]).summary() == "1/1 seed scenarios passed"
    assert DemoReport(lab="l", results=[row(extra=True)]).summary() == "1/1 beyond the seeds passed"
