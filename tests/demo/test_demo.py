"""``l7gate demo`` for real: builds its lab, plays every seed scenario, exits 0 with every row passed,
and leaves no lab behind."""

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
    expected_rows = sum(len(phase.steps) for phase in load_scenarios(DEFAULT_SCENARIOS).phases)
    assert report["total"] == expected_rows and report["passed"] is True
    assert NAME not in list_labs()
    assert not any(ns.startswith(f"l7g-{NAME}-") for ns in os.listdir("/run/netns"))
