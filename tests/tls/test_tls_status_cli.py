"""Files and lab mode: a rule a node refuses (a TLS secret missing: the agent's ``policy_errors``) shows
per policy in ``l7gate policy get`` and ``l7gate status``, with the field path."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from l7.cli import app, register

register()

POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: intercept, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      terminatingTLS: {secret: {name: absent}}
      rules: {http: [{method: GET}]}
"""
PATH = "spec.egress[0].toPorts[0].terminatingTLS.secret"
MESSAGE = "secret default/absent not found (the port refuses connections)"


def test_refused_rules_show_per_policy(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(POLICY)
    agent = tmp_path / "agent"
    agent.mkdir()
    problem = {"policy": "CiliumNetworkPolicy/shop/intercept", "path": PATH, "message": MESSAGE}
    status = {"pid": 0, "node": "n1", "ready": True, "policies_hash": "abc", "policy_errors": [problem]}
    (agent / "agent-n1.json").write_text(json.dumps(status))
    where = ["--state-dir", str(agent), "--policies", str(tmp_path / "policies")]
    result = CliRunner().invoke(app, ["policy", "get", *where, "-o", "json"])
    assert result.exit_code == 0, result.output  # the set is valid: a refused rule is no validation error
    data = json.loads(result.stdout)
    assert data["policies"][0]["refused"] == [{"node": "n1", "path": PATH, "message": MESSAGE}]
    result = CliRunner().invoke(app, ["policy", "get", *where])
    assert f"refused on n1: CiliumNetworkPolicy/shop/intercept {PATH}: {MESSAGE}" in result.stdout
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["status", "--state-dir", str(agent)])
    assert f"n1: refused CiliumNetworkPolicy/shop/intercept {PATH}: {MESSAGE}" in result.stdout
