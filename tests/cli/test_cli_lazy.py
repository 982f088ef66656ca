"""The command line imports only the modules of the command it runs (``l7gate agent`` starts without
the lab, demo and view modules), and the table saying which module registers which command is whole."""

from __future__ import annotations

import json
import subprocess
import sys

from l7.cli import COMMAND_MODULES, app, policy_app, register


def _imported(argv: list[str]) -> list[str]:
    """The l7.cli and l7.lab modules a fresh interpreter has after registering for ``argv``."""
    code = (
        "import json, sys; from l7.cli import register; register(sys.argv[1:]); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('l7.cli.', 'l7.lab')))))"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def test_every_command_is_in_the_table() -> None:
    register()
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == set(COMMAND_MODULES)
    assert {c.name for c in policy_app.registered_commands} == {"validate", "trace", "selectors", "get"}


def test_agent_imports_only_its_module() -> None:
    assert _imported(["agent", "--node", "n1", "--policies", "p"]) == ["l7.cli.agent_cmds", "l7.cli.common"]
    assert "l7.cli.views_cmds" in _imported(["policy", "get"])
    assert "l7.cli.demo_cmds" in _imported(["--help"])  # no command: everything (the full help)


def test_agent_help_through_the_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "l7.cli", "agent", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "--policies" in out.stdout
