"""Play a scenario file in a lab: build the lab, then per phase apply its policy set (``lab apply``:
validated, swapped in, waited for on every node agent) and run its steps inside the pods (in parallel:
they are independent; in order for a ``sequential`` phase), classify what each command showed and check
it. The lab is always taken down at the end (also on Ctrl-C or SIGTERM, which the CLI turns into
KeyboardInterrupt), unless ``keep``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from l7.demo.observe import Observation, check, classify
from l7.demo.scenarios import Phase, Scenarios, Step
from l7.errors import L7GateError
from l7.lab import Lab, LabError, down
from l7.lab.lab import apply_policies
from l7.lab.state import check_name, load_state

STEP_TIMEOUT = 20.0
PARALLEL = 6


class DemoError(L7GateError):
    pass


@dataclass(frozen=True)
class StepResult:
    phase: str
    where: str
    command: str
    expected: str
    observed: str
    passed: bool
    reason: str
    seconds: float
    extra: bool = False  # the phase is not from the seed posts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DemoReport:
    lab: str
    results: list[StepResult] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # phase → note
    up_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def count(self, *, extra: bool) -> tuple[int, int]:
        """(passed, total) of the seed scenarios (``extra=False``) or of the others."""
        rows = [r for r in self.results if r.extra == extra]
        return sum(1 for r in rows if r.passed), len(rows)

    def summary(self) -> str:
        """``57/57 seed scenarios + 12/12 beyond the seeds passed`` (a part without rows left out)."""
        (seed_passed, seeds), (extra_passed, extras) = self.count(extra=False), self.count(extra=True)
        parts = [f"{seed_passed}/{seeds} seed scenarios"] if seeds or not extras else []
        if extras:
            parts.append(f"{extra_passed}/{extras} beyond the seeds")
        return " + ".join(parts) + " passed"

    def as_dict(self) -> dict[str, Any]:
        seed_passed, seed_total = self.count(extra=False)
        extra_passed, extra_total = self.count(extra=True)
        return {
            "lab": self.lab,
            "passed": self.passed,
            "total": len(self.results),
            "failed": sum(1 for r in self.results if not r.passed),
            "seed": {"total": seed_total, "failed": seed_total - seed_passed},
            "extra": {"total": extra_total, "failed": extra_total - extra_passed},
            "up_seconds": round(self.up_seconds, 2),
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
            "results": [r.as_dict() for r in self.results],
        }


def _first_v4(ips: list[str]) -> str | None:
    for ip in ips:
        if ipaddress.ip_address(ip).version == 4:
            return ip
    return None


def addresses(lab: Lab) -> dict[str, str]:
    """``ip:POD``, ``ip:NS/POD``, ``ip:WORLD`` and ``node:NODE`` → IPv4 address, ``cert:NAME`` → the
    path of ``certs/NAME.crt`` in the lab's state (for step templates)."""
    out: dict[str, str] = {}
    for cert in sorted((lab.state.directory / "certs").glob("*.crt")):
        out[f"cert:{cert.stem}"] = str(cert)
    dp = lab.datapath()
    for pod in dp["pods"]:
        v4 = _first_v4(pod["ips"])
        if v4:
            out[f"ip:{pod['namespace']}/{pod['name']}"] = v4
            out.setdefault(f"ip:{pod['name']}", v4)
    for host in dp["world"]:
        v4 = _first_v4(host["ips"])
        if v4:
            out[f"ip:{host['name']}"] = v4
    for node in dp["nodes"]:
        v4 = _first_v4([str(ip) for ip in node["uplinkIPs"]])
        if v4:
            out[f"node:{node['name']}"] = v4
    return out


def run_step(lab: Lab, phase: Phase, step: Step, ips: dict[str, str]) -> StepResult:
    t0 = time.monotonic()
    try:
        argv = step.argv(ips)
    except KeyError as exc:
        return StepResult(
            phase.name,
            step.where,
            step.run,
            step.expect.describe(),
            "-",
            False,
            f"unknown template {exc}",
            0.0,
            phase.extra,
        )
    if step.node is not None:
        full = ["nsenter", f"--net=/run/netns/{lab.node_netns(step.node)}", *argv]
    else:
        full = lab.exec_argv(step.pod or "", argv)
    try:
        proc = subprocess.run(
            full, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
        )
        obs = classify(argv, proc.returncode, proc.stdout, proc.stderr)
    except subprocess.TimeoutExpired:
        obs = Observation("error", -1, detail=f"no result within {STEP_TIMEOUT:.0f}s")
    except (OSError, LabError) as exc:
        obs = Observation("error", -1, detail=str(exc))
    ok, why = check(step.expect, obs)
    return StepResult(
        phase=phase.name,
        where=step.where,
        command=shlex.join(argv),
        expected=step.expect.describe(),
        observed=obs.describe(),
        passed=ok,
        reason=why,
        seconds=round(time.monotonic() - t0, 3),
        extra=phase.extra,
    )


def apply_phase(lab: Lab, scenarios: Scenarios, phase: Phase) -> float:
    """Make the phase's policy files the lab's whole policy set; seconds until every agent applied it."""
    from l7.policy.documents import load_paths

    paths = scenarios.policy_paths(phase)
    if paths:
        result = load_paths(paths)
        if result.errors:
            raise DemoError(f"{phase.name}: invalid policies: " + "; ".join(str(e) for e in result.errors))
    with tempfile.TemporaryDirectory(prefix="l7gate-demo-") as tmp:
        for path in paths:
            shutil.copyfile(path, Path(tmp) / path.name)
        _digest, seconds = apply_policies(lab.name, tmp)
    return seconds


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def run_demo(
    scenarios: Scenarios,
    name: str,
    *,
    only: str | None = None,
    keep: bool = False,
    progress: Progress = _quiet,
    on_result: Callable[[StepResult], None] | None = None,
) -> DemoReport:
    """Build the lab ``name``, play the selected phases, take the lab down (unless ``keep``)."""
    selected = scenarios.select(only)
    if not selected:
        raise DemoError(f"no scenario matches {only!r}")
    if load_state(check_name(name)) is not None:
        raise DemoError(f"lab {name!r} exists; take it down first (`l7gate lab down --name {name}`)")
    started = time.monotonic()
    report = DemoReport(lab=name)
    try:
        lab = Lab.up(scenarios.topology, name, progress=progress)
        report.up_seconds = time.monotonic() - started
        ips = addresses(lab)
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            for phase, steps in selected:
                names = ", ".join(phase.policies) or "no policies"
                progress(f"{phase.name}: applying {names}")
                apply_phase(lab, scenarios, phase)
                progress(f"{phase.name}: running {len(steps)} command(s)")
                if phase.sequential:
                    results = [run_step(lab, phase, s, ips) for s in steps]
                else:
                    results = list(pool.map(lambda s, p=phase: run_step(lab, p, s, ips), steps))
                for result in results:
                    report.results.append(result)
                    if on_result is not None:
                        on_result(result)
                if phase.note:
                    report.notes[phase.name] = phase.note
    finally:
        if not keep:
            progress(f"taking lab {name} down")
            with contextlib.suppress(LabError):
                down(name)
        report.seconds = time.monotonic() - started
    return report
