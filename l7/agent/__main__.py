"""``python -m l7.agent ARGS`` = ``l7gate agent ARGS`` (what the lab starts in each node namespace)."""

from __future__ import annotations

import sys

from l7.cli import agent_cmds, app

if __name__ == "__main__":
    assert agent_cmds
    app(args=["agent", *sys.argv[1:]], prog_name="l7gate")
