"""``l7gate demo`` for real: builds its lab, plays every seed scenario and the phases beyond the seeds
(SNI, TLS interception, host policy), exits 0 with every row passed, and leaves no lab behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from l7.demo import DEFAULT_SCENARIOS, load_scenarios
from l7.lab import down, list_labs

pytestmark = pytest.mark.root

NAME = f"pxdemo{os.getpid() % 100000}"
REPO = Path(__file__).resolve().parents[2]


def test_demo_passes_every_seed_scenario() -> None:
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "from l7.cli import main; main()",
                "demo",
                "--name",
                NAME,
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
            check=False,
        )
    finally:
        down(NAME)  # normally a no-op: the demo takes its lab down itself
    report = json.loads(proc.stdout)
    failed = [r for r in report["results"] if not r["passed"]]
    assert failed == [], json.dumps(failed, indent=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    phases = load_scenarios(DEFAULT_SCENARIOS).phases
    extra_rows = sum(len(phase.steps) for phase in phases if phase.extra)
    assert report["seed"] == {"total": 57, "failed": 0}, "all 57 seed scenarios are played"
    assert report["extra"] == {"total": extra_rows, "failed": 0} and extra_rows > 0
    assert report["total"] == 57 + extra_rows and report["passed"] is True
    assert {r["phase"] for r in report["results"] if r["extra"]} == {p.name for p in phases if p.extra}
    assert NAME not in list_labs()
    assert not any(ns.startswith(f"l7g-{NAME}-") for ns in os.listdir("/run/netns"))
