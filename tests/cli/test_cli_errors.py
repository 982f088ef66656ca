"""Every command with a missing lab, state directory or file: exit status 2, a one-line error, no
traceback (the exit-code convention of l7.cli.common)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l7.cli import app, register

register()
NO_LAB = "l7gops-missing"


def _cases(tmp: Path) -> list[list[str]]:
    missing = str(tmp / "missing")
    lab = ["--lab", NO_LAB]
    state = ["--state-dir", missing]
    return [
        ["policy", "validate", missing],
        [
            "policy",
            "trace",
            "--policies",
            missing,
            "--endpoints",
            missing,
            "--from",
            "a",
            "--to",
            "b",
            "--port",
            "80/TCP",
        ],
        ["observe", *lab],
        ["observe", *state],
        ["status", *lab],
        ["status", *state],
        ["fqdn", "cache", *lab],
        ["fqdn", "cache", *state],
        ["endpoint", "list", *lab],
        ["endpoint", "list", *state],
        ["identity", "list", *lab],
        ["identity", "get", "1", *state],
        ["policy", "selectors", *lab],
        ["policy", "get", *state],
        ["bpf", "policy", "get", "client", *lab],
        ["bpf", "policy", "get", "3", *state],
        ["lab", "status", *lab],
        ["lab", "exec", *lab, "pod", "--", "true"],
        ["lab", "up", missing, "--lab", NO_LAB],
        ["lab", "apply", missing, *lab],
        ["demo", "--scenarios", missing],
        ["agent", "--node", "n", "--policies", missing, "--endpoints", missing],
        ["agent", "--node", "n", *lab],
        ["agent-probe", "--node", "n", *state],
        ["xds", "serve", "--listen", "127.0.0.1:0", "--policies", missing, "--endpoints", missing],
        ["observe", "--lab", "Not_A_Name"],
    ]


def test_missing_input_exits_2_without_traceback(tmp_path: Path) -> None:
    for argv in _cases(tmp_path):
        result = CliRunner().invoke(app, argv)
        text = result.output
        assert result.exit_code == 2, (argv, result.exit_code, text, result.exception)
        assert "Traceback" not in text, (argv, text)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), argv


@pytest.mark.parametrize("argv", [["observe", "--lab", NO_LAB], ["policy", "validate", "/nonexistent"]])
def test_console_script_prints_no_traceback(argv: list[str]) -> None:
    """The real entry point too (typer's pretty exceptions are off; errors are one line)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from l7.cli import main; main()", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ")


def test_bad_usage_exits_2() -> None:
    for argv in (
        ["observe", "--verdict", "maybe"],
        ["policy", "validate"],
        ["observe", "-o", "xml"],
        ["bpf", "policy", "get"],
        ["bpf", "policy", "get", "x", "-o", "xml"],
    ):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, argv
