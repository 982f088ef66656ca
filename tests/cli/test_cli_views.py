"""``observe`` (direction, deciding rule, filters), ``endpoint list``, ``identity list|get``, ``policy
selectors``, ``policy get`` and ``policy validate`` against a files-mode state directory: seed 002's
endpoints and two seed policies, flow-log lines as the agent, Envoy and the DNS proxy write them."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from l7.cli import app, register

register()
ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "deploy" / "examples" / "seeds"
NODE = "k8s-w1"


@pytest.fixture
def state(tmp_path: Path) -> dict[str, Path]:
    policies = tmp_path / "policies"
    policies.mkdir()
    for name in ("002-allow-public-from-prod.yaml", "002-default-deny-dev.yaml"):
        shutil.copy(SEEDS / name, policies / name)
    endpoints = tmp_path / "endpoints.yaml"
    shutil.copy(ROOT / "deploy" / "endpoints" / "seed-002.yaml", endpoints)
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / f"agent-{NODE}.json").write_text(
        json.dumps({"pid": 0, "node": NODE, "ready": True, "generation": 3, "policies_hash": "abc"})
    )
    now = time.time()
    l3l4 = [
        # client-prod → service-pod:80, redirected to Envoy at service-pod's ingress
        {
            "time": now - 60,
            "type": "verdict",
            "hook": "to_lxc",
            "verdict": "redirect",
            "reason": "NONE",
            "proto": 6,
            "src": "172.20.1.11",
            "dst": "172.20.1.10",
            "sport": 40000,
            "dport": 80,
            "proxy_port": 10001,
        },
        # dev-pod → service-pod:80, dropped at service-pod's ingress: default deny
        {
            "time": now - 30,
            "type": "drop",
            "hook": "to_lxc",
            "verdict": "drop",
            "reason": "POLICY_DENIED",
            "proto": 6,
            "src": "172.20.1.194",
            "dst": "172.20.1.10",
            "sport": 40001,
            "dport": 80,
        },
    ]
    http = [
        {
            "start_time": _iso(now - 59),
            "method": "GET",
            "path": "/public",
            "authority": "service-svc",
            "status": 200,
            "route": "allow-0",
            "downstream_remote": "172.20.1.11:40000",
            "downstream_local": "172.20.1.10:80",
        },
        {
            "start_time": _iso(now - 58),
            "method": "GET",
            "path": "/private",
            "authority": "service-svc",
            "status": 403,
            "route": "deny",
            "downstream_remote": "172.20.1.11:40002",
            "downstream_local": "172.20.1.10:80",
        },
    ]
    for kind, lines in (("l3l4", l3l4), ("http", http)):
        (agent / f"flows-{NODE}-{kind}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"agent": agent, "policies": policies, "endpoints": endpoints}


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    return result.stdout


def base(state: dict[str, Path]) -> list[str]:
    return [
        "--state-dir",
        str(state["agent"]),
        "--policies",
        str(state["policies"]),
        "--endpoints",
        str(state["endpoints"]),
    ]


def observe(state: dict[str, Path], *args: str) -> list[dict[str, Any]]:
    out = run("observe", *base(state), "-o", "json", *args)
    return [json.loads(line) for line in out.splitlines()]


def test_observe_names_direction_and_the_deciding_rule(state: dict[str, Path]) -> None:
    flows = observe(state)
    assert [f["type"] for f in flows] == ["l3l4", "http", "http", "l3l4"]
    redirect, public, private, drop = flows
    assert redirect["direction"] == "ingress" and redirect["reason"] == "to-proxy:10001"
    assert redirect["decision"] == "l7"
    assert any("allow-public-from-prod" in by for by in redirect["decided_by"])
    assert public["direction"] == "ingress" and public["verdict"] == "allowed"
    (rule,) = public["decided_by"]
    assert "allow-public-from-prod" in rule and "rules.http[0]" in rule
    assert private["verdict"] == "denied"
    assert drop["direction"] == "ingress" and drop["decision"] == "default-deny"
    assert drop["decided_by"] and all("/" in p for p in drop["decided_by"])
    table = run("observe", *base(state))
    assert "REDIRECTED (to-proxy:10001)" in table and "INGRESS" in table and "default deny" in table


def test_observe_filters(state: dict[str, Path]) -> None:
    assert len(observe(state, "--verdict", "dropped")) == 2  # the L3/L4 drop and the 403
    assert [f["type"] for f in observe(state, "--verdict", "redirected")] == ["l3l4"]
    assert len(observe(state, "--from-pod", "default/client")) == 3
    assert len(observe(state, "--to-pod", "service-pod", "--type", "l3l4")) == 2
    assert len(observe(state, "--namespace", "default")) == 4
    assert len(observe(state, "--namespace", "kube-system")) == 0
    assert len(observe(state, "--label", "env=dev")) == 1
    assert [f["http_status"] for f in observe(state, "--http-status", "4+")] == [403]
    assert [f["http_path"] for f in observe(state, "--http-path", "^/pub")] == ["/public"]
    assert len(observe(state, "--port", "40001")) == 1
    assert len(observe(state, "--since", "45s")) == 1
    assert len(observe(state, "--until", "45s")) == 3
    assert len(observe(state, "--fqdn", "service-*")) == 2
    docs = list(yaml.safe_load_all(run("observe", *base(state), "-o", "yaml", "--last", "1")))
    assert len(docs) == 1 and docs[0]["type"] == "l3l4"
    run("observe", *base(state), "--since", "yesterday-ish", code=2)


def test_views(state: dict[str, Path]) -> None:
    rows = yaml.safe_load(run("endpoint", "list", *base(state), "-o", "yaml"))
    by_key = {r["endpoint"]: r for r in rows}
    assert "default/service-pod" in by_key and "default/client-dev" not in by_key  # k8s-w2's
    service = by_key["default/service-pod"]
    assert service["ingress"] == "enabled" and service["revision"] == 3 and service["policies_hash"] == "abc"
    identities = json.loads(run("identity", "list", *base(state), "-o", "json"))
    numbers = {i["id"] for i in identities}
    assert service["identity"] in numbers
    one = json.loads(run("identity", "get", str(service["identity"]), *base(state), "-o", "json"))
    assert "k8s:app=service" in one["labels"]
    run("identity", "get", "999999", *base(state), code=1)
    selectors = json.loads(run("policy", "selectors", *base(state), "-o", "json"))
    assert any(s["identities"] != "all" and s["users"] for s in selectors)
    applied = json.loads(
        run(
            "policy",
            "get",
            "--state-dir",
            str(state["agent"]),
            "--policies",
            str(state["policies"]),
            "-o",
            "json",
        )
    )
    assert applied["hash"] and applied["applied"] == {NODE: "abc"} and len(applied["policies"]) == 2
    assert "endpoint" in run("endpoint", "list", *base(state))


def test_validate_stdin_lists_skips_and_order(tmp_path: Path) -> None:
    text = (SEEDS / "002-l4-rule.yaml").read_text()
    listed = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [yaml.safe_load(text), {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}],
    }
    stream = yaml.safe_dump(listed) + "---\nkey: [unclosed\n---\n" + text.replace("spec:", "spek:")
    result = CliRunner().invoke(app, ["policy", "validate", "-", "-o", "json"], input=stream)
    assert result.exit_code == 1 and "Traceback" not in result.output
    rows = json.loads(result.stdout)["documents"]
    assert [(r["document"], r["status"]) for r in rows] == [
        (0, "ok"),
        (0, "skipped"),
        (1, "error"),
        (2, "error"),
    ]
    assert "did you mean 'spec'" in json.dumps(rows[3])


def test_version_and_no_bool_hints() -> None:
    assert run("--version").startswith("l7gate ")
    help_text = run("observe", "--help")
    assert "<bool>" not in help_text and "--from-pod" in help_text
