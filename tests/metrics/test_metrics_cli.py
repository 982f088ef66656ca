"""``l7gate agent --metrics-address``: a malformed address is a usage error (exit 2, no traceback), before
anything starts; the option is listed in the help with its environment variable."""

from __future__ import annotations

import subprocess
import sys

from tests.agent.agent_helpers import SEED_002_ENDPOINTS, SEEDS
from tests.metrics.exposition import REPO


def l7gate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from l7.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
        env=env,
    )


def test_bad_metrics_address_is_a_usage_error() -> None:
    inputs = ["--policies", str(SEEDS), "--endpoints", str(SEED_002_ENDPOINTS)]
    proc = l7gate("agent", "--node", "n1", *inputs, "--metrics-address", "9962")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: --metrics-address: metrics address '9962': expected host:port, e.g. 127.0.0.1:9962"
    )
    assert "Traceback" not in proc.stderr


def test_metrics_address_in_help() -> None:
    proc = l7gate("agent", "--help", env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "--metrics-address" in proc.stdout and "L7GATE_METRICS_ADDR" in proc.stdout
