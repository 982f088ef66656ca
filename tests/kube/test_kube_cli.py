"""``l7gate agent --kubernetes`` wiring (kubeconfig → client → controller → agent inputs) with the agent
loop replaced by a recorder, and ``l7gate agent-probe`` on status files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakeapi import FakeAPIServer
from kube_helpers import l7np, pod
from typer.testing import CliRunner

from l7.agent import node as agent_node
from l7.cli import agent_cmds, app

pytestmark = pytest.mark.root  # the agent command refuses to run without root

assert agent_cmds  # registers the commands


@pytest.fixture
def server() -> Iterator[FakeAPIServer]:
    srv = FakeAPIServer().start()
    try:
        yield srv
    finally:
        srv.close()


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "fake",
            }
        )
    )
    return path


def test_agent_kubernetes_mode_writes_the_inputs_the_agent_runs_on(
    server: FakeAPIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.create("pods", pod("web", "shop", "10.1.0.10", "n1", {"app": "web"}))
    server.create("l7networkpolicies", l7np("p", "shop", {"endpointSelector": {}}))
    seen: list[Any] = []

    def fake_run_agent(cfg: agent_node.AgentConfig) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(agent_node, "run_agent", fake_run_agent)
    state = tmp_path / "state"
    config = kubeconfig(tmp_path / "kubeconfig", server.url)
    argv = ["agent", "--kubernetes", "--node", "n1", "--state-dir", str(state), "--services", "dns,flows"]
    result = CliRunner().invoke(app, [*argv, "--kubeconfig", str(config)])
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert cfg.policies == state / "k8s" / "policies" and cfg.endpoints == state / "k8s" / "endpoints.json"
    assert cfg.services == ("dns", "flows") and cfg.datapath_name == "n1"
    assert (cfg.policies / "L7NetworkPolicy" / "shop" / "p.yaml").exists()
    assert [e["name"] for e in json.loads(cfg.endpoints.read_text())["endpoints"]] == ["web"]
    assert any(q.get("allowWatchBookmarks") == ["true"] for m, _, q in server.requests if m == "WATCH")


def test_agent_kubernetes_mode_without_a_cluster_fails_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["agent", "--kubernetes", "--node", "n1", "--kubeconfig", str(tmp_path / "none")]
    )
    assert result.exit_code == 1


def test_agent_probe(tmp_path: Path) -> None:
    status = {"pid": os.getpid(), "state": "running", "ready": True, "errors": []}
    (tmp_path / "agent-n1.json").write_text(json.dumps(status))
    probe = ["agent-probe", "--node", "n1", "--state-dir", str(tmp_path)]
    assert CliRunner().invoke(app, probe).exit_code == 0
    assert CliRunner().invoke(app, [*probe, "--ready"]).exit_code == 0
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "controller-n1.json").write_text(json.dumps({"synced": False}))
    assert CliRunner().invoke(app, [*probe, "--ready"]).exit_code == 1
    (tmp_path / "agent-n1.json").write_text(json.dumps({**status, "state": "stopped"}))
    assert CliRunner().invoke(app, probe).exit_code == 1
    assert (
        CliRunner().invoke(app, ["agent-probe", "--node", "n2", "--state-dir", str(tmp_path)]).exit_code == 1
    )
