"""Files mode, as on a plain Linux host: ``l7gate agent --policies DIR --endpoints FILE`` watches both,
finds each endpoint's veth from the route to its IP, and applies changes incrementally. A broken file is
rejected with its field path while the last good policy set stays enforced; audit mode lets would-be
drops through.

A one-node lab provides the namespaces and veths (its own agent is stopped first); the files-mode agent
adopts the node's datapath. Traffic goes only to the lab's own addresses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_helpers import REPO

from l7.agent.envoy import stop_envoy
from l7.flows import parse_http
from l7.lab import Lab, down, procs
from l7.lab import agents as agent_lab
from l7.lab.topology import parse_topology

pytestmark = pytest.mark.root

NAME = f"fm{os.getpid() % 100000}"
NODE = "node-1"
TOPOLOGY = """
nodes: [{name: node-1}]
pods:
  - {name: web, labels: {app: web}, server: {kind: http, paths: {/: "hello\\n"}}, ipv6: false}
  - {name: prod, labels: {env: prod}, ipv6: false}
  - {name: dev, labels: {env: dev}, ipv6: false}
"""

WEB_FROM = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web-from}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{env: {env}}}}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"""

WEB_L7 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {env: prod}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /}]}
"""

BROKEN = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {env: dev}}]
    toPorts: [{ports: [{port: "80", protocol: TCPX}]}]
"""


class FilesAgent:
    def __init__(self, lab: Lab, root: Path) -> None:
        self.lab = lab
        self.policies = root / "policies"
        self.endpoints = root / "endpoints.json"
        self.state = root / "state"
        self.policies.mkdir(parents=True)
        shutil.copy(lab.state.directory / "endpoints.json", self.endpoints)
        node = next(n for n in agent_lab.datapath_info(lab.state)["nodes"] if n["name"] == NODE)
        argv = [
            "nsenter",
            f"--net=/run/netns/{node['netns']}",
            str(REPO / ".venv" / "bin" / "l7gate"),
            "agent",
            "--node",
            NODE,
            "--policies",
            str(self.policies),
            "--endpoints",
            str(self.endpoints),
            "--state-dir",
            str(self.state),
            "--uplink",
            str(node["uplink"]),
            "--datapath-name",
            str(node["netns"]),
            "--services",
            "envoy,flows",
        ]
        self.rec = procs.launch("files-agent", str(node["netns"]), argv, root / "agent.log", None)

    def status(self) -> dict[str, Any]:
        path = self.state / f"agent-{NODE}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def wait(
        self, predicate: str, check: Callable[[dict[str, Any]], Any], timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert procs.alive(self.rec), procs.tail(self.rec, 20)
            st = self.status()
            if st and check(st):
                return st
            time.sleep(0.1)
        raise AssertionError(f"agent never reached {predicate}: {self.status()}\n{procs.tail(self.rec, 20)}")

    def write_policy(self, name: str, text: str) -> None:
        tmp = self.policies / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(self.policies / name)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    try:
        built = Lab.up(parse_topology(yaml.safe_load(TOPOLOGY), "<test_agent_files>"), NAME)
        rec = agent_lab.agent_records(built.state)[NODE]
        assert procs.stop(rec)  # the lab's own agent: the files-mode agent takes over its datapath
        yield built
    finally:
        down(NAME)


@pytest.fixture
def agent(lab: Lab, tmp_path: Path) -> Iterator[FilesAgent]:
    a = FilesAgent(lab, tmp_path)
    try:
        yield a
    finally:
        procs.stop(a.rec)
        stop_envoy(a.state, NODE)  # the agent's Envoy outlives it on purpose


def http(lab: Lab, pod: str, path: str) -> tuple[int, bytes]:
    ip = lab.pod("web").ips[0]
    argv = ["curl", "-s", "-m", "3", "-o", "-", "-w", "\n%{http_code}", f"http://{ip}{path}"]
    out = subprocess.run(lab.exec_argv(pod, argv), capture_output=True, timeout=15, check=False).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code or 0), body


def set_audit(agent: FilesAgent, on: bool) -> None:
    data = json.loads(agent.endpoints.read_text())
    for ep in data["endpoints"]:
        if ep["name"] == "web":
            ep["policyAuditMode"] = on
    before = agent.status()["generation"]
    tmp = agent.endpoints.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(agent.endpoints)
    agent.wait("endpoints applied", lambda s: s.get("generation", 0) > before)


def connects(lab: Lab, pod: str) -> bool:
    ip = lab.pod("web").ips[0]
    argv = ["curl", "-sf", "-o", "/dev/null", "--connect-timeout", "1", "-m", "2", f"http://{ip}/"]
    return lab.exec(pod, argv, timeout=10).returncode == 0


def test_hot_reload_broken_file_and_audit(lab: Lab, agent: FilesAgent) -> None:
    agent.write_policy("web.yaml", WEB_FROM.format(env="prod"))
    first = agent.wait("ready", lambda s: s.get("ready") and s.get("generation", 0) >= 1)
    assert not first["errors"] and not first["missing"], first
    assert connects(lab, "prod") and not connects(lab, "dev")

    # a broken file: reported with its field path, the last good set stays enforced
    generation = first["generation"]
    agent.write_policy("broken.yaml", BROKEN)
    bad = agent.wait("errors reported", lambda s: s.get("errors"))
    text = "\n".join(map(str, bad["errors"]))
    assert "broken.yaml" in text and "spec.ingress[0].toPorts[0].ports[0].protocol" in text, text
    assert bad["generation"] == generation
    assert connects(lab, "prod") and not connects(lab, "dev")

    # fixed: applied incrementally, dev allowed instead of prod
    (agent.policies / "broken.yaml").unlink()
    agent.write_policy("web.yaml", WEB_FROM.format(env="dev"))
    agent.wait("new set applied", lambda s: not s.get("errors") and s.get("generation", 0) > generation)
    assert connects(lab, "dev") and not connects(lab, "prod")

    # audit mode for the web pod (endpoints file): the would-be drop of prod goes through
    set_audit(agent, True)
    assert connects(lab, "prod") and connects(lab, "dev")

    # ... and at L7: what no HTTP rule allows is forwarded (the server's own 404, not 403) and logged
    # with verdict audit; out of audit mode it is 403 again
    generation = agent.status()["generation"]
    agent.write_policy("web.yaml", WEB_L7)
    agent.wait("L7 policy applied", lambda s: s.get("generation", 0) > generation)
    assert http(lab, "prod", "/") == (200, b"hello\n")
    assert http(lab, "prod", "/nope")[0] == 404
    log = agent.state / f"flows-{NODE}-http.jsonl"
    deadline = time.monotonic() + 10
    audited: list[str] = []
    while not audited and time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        audited = [x for x in lines if parse_http(json.loads(x), NODE).verdict == "audit"]
        time.sleep(0.2)
    assert audited and '"/nope"' in audited[-1], audited
    set_audit(agent, False)
    assert http(lab, "prod", "/nope") == (403, b"Access denied\r\n")
    assert http(lab, "prod", "/") == (200, b"hello\n")
