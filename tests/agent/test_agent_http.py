"""L7 HTTP policies end to end: the seed-002 lab with its node agents, each running Envoy fed by the
agent's xDS server; real curl (and a keep-alive client) inside the pods.

The lab is ``deploy/lab/seed-002.yaml`` plus one pod the ``002-l7-rule.yaml`` example selects
(``app: myService``, a whoami server, which answers every method and path). The seed policies are used
verbatim. One lab per module with a unique name, always taken down in a finalizer, which also checks
that no Envoy the agents started is left running.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from l7.agent.envoy_files import EnvoyRecord
from l7.lab import Lab, down, procs
from l7.lab import agents as agent_lab
from l7.lab.topology import parse_topology
from tests.agent.agent_helpers import SEED_002_LAB, SEEDS

pytestmark = pytest.mark.root

NAME = f"hx{os.getpid() % 100000}"
DENIED = b"Access denied\r\n"
PUBLIC_PAGE = b"<html><body><h1>Hello from /public</h1></body></html>\n"
PRIVATE_PAGE = b"<html><body><h1>Hello from /private</h1></body></html>\n"
CURL_TIMEOUT = 28
SEED_POLICIES = ("002-allow-public-from-prod", "002-l7-rule")

# One HTTP/1.1 connection, kept alive: reads "METHOD PATH" lines on stdin, prints
# "<local port> <status> <body repr>" per response (the local port shows the connection is the same).
KEEPALIVE_CLIENT = r"""
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
for line in sys.stdin:
    method, path = line.split()
    conn.request(method, path)
    r = conn.getresponse()
    body = r.read()
    print(conn.sock.getsockname()[1], r.status, repr(body), flush=True)
"""


def topology() -> dict[str, object]:
    topo = yaml.safe_load(SEED_002_LAB.read_text())
    topo["description"] = "seed 002 + the l7-rule example's app=myService pod"
    topo["pods"].append(
        {"name": "my-service", "labels": {"app": "myService"}, "node": "k8s-w1", "server": "whoami"}
    )
    return dict(topo)


def policy_dir(tmp: Path, *names: str, extra: dict[str, str] | None = None) -> Path:
    d = tmp / f"policies-{time.monotonic_ns()}"
    d.mkdir()
    for name in names:
        shutil.copyfile(SEEDS / f"{name}.yaml", d / f"{name}.yaml")
    for file, text in (extra or {}).items():
        (d / file).write_text(text)
    return d


def envoy_records(lab: Lab) -> dict[str, EnvoyRecord]:
    out = {}
    for path in agent_lab.agent_dir(lab.state).glob("envoy-*.pid"):
        record = EnvoyRecord.load(path)
        assert record is not None, path
        out[path.stem.removeprefix("envoy-")] = record
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("http")
    records: dict[str, EnvoyRecord] = {}
    started = time.monotonic()
    try:
        built = Lab.up(
            parse_topology(topology(), "<test_agent_http>"), NAME, policies=policy_dir(tmp, *SEED_POLICIES)
        )
        print(f"lab up with agents and Envoys: {time.monotonic() - started:.2f}s")
        records = envoy_records(built)
        assert sorted(records) == ["k8s-ctr", "k8s-w1", "k8s-w2"]
        yield built
    finally:
        down(NAME)
        left = [r.pid for r in records.values() if r.alive()] + _envoy_pids(f"/labs/{NAME}/")
        assert not left, f"Envoy left running after lab down: {left}"


def apply(tmp_path: Path, *names: str, extra: dict[str, str] | None = None) -> None:
    _, seconds = agent_lab.apply(NAME, policy_dir(tmp_path, *names, extra=extra))
    print(f"applied {names} {list(extra or ())} in {seconds:.3f}s")


def curl(lab: Lab, pod: str, url: str, *args: str) -> tuple[int, int, bytes]:
    """(curl exit status, HTTP status, body)."""
    argv = ["curl", "-sS", "-m", "2", "--path-as-is", "-o", "-", "-w", "\n%{http_code}", *args, url]
    proc = subprocess.run(lab.exec_argv(pod, argv), capture_output=True, timeout=15, check=False)
    body, _, code = proc.stdout.rpartition(b"\n")
    return proc.returncode, int(code or 0), body


def ok(body: bytes) -> tuple[int, int, bytes]:
    return 0, 200, body


def denied() -> tuple[int, int, bytes]:
    return 0, 403, DENIED


# A rule like the seed's, with the sub-path regex the path-trick checks need.
PUBLIC_SUBTREE = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-public-subtree}
spec:
  endpointSelector: {matchLabels: {app: service}}
  ingress:
  - fromEndpoints: [{matchLabels: {env: prod}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "^/public(/.*)?$"}]
"""

PRIVATE_ONLY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-public-from-prod}
spec:
  endpointSelector: {matchLabels: {app: service}}
  ingress:
  - fromEndpoints: [{matchLabels: {env: prod}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /private}]
"""


# --------------------------------------------------------------------------------------------- tests
def test_seed_002_allow_public_from_prod(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path, *SEED_POLICIES)
    assert curl(lab, "client-prod", "http://service-svc/public") == ok(PUBLIC_PAGE)
    assert curl(lab, "client-prod", "http://service-svc/private") == denied()
    for ip in lab.pod("service-pod").ips:  # both families go through Envoy
        host = f"[{ip}]" if ":" in ip else ip
        assert curl(lab, "client-prod", f"http://{host}/public") == ok(PUBLIC_PAGE)
        assert curl(lab, "client-prod", f"http://{host}/private") == denied()
    assert curl(lab, "client-dev", "http://service-svc/public")[0] == CURL_TIMEOUT  # L3 drop


def test_l7_rule_example(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path, *SEED_POLICIES)
    url = f"http://{lab.pod('my-service').ips[0]}"
    header = ("-H", "X-My-Header: true")
    for pod in ("client-dev", "dev-pod"):  # any peer, another node and the same node
        rc, status, body = curl(lab, pod, f"{url}/path1")
        assert (rc, status) == (0, 200) and b"GET /path1 HTTP/1.1" in body, body
        rc, status, body = curl(lab, pod, f"{url}/path2", "-X", "PUT", *header)
        assert (rc, status) == (0, 200) and b"PUT /path2 HTTP/1.1" in body, body
        assert curl(lab, pod, f"{url}/path2", "-X", "PUT") == denied()
        assert curl(lab, pod, f"{url}/path2", "-X", "PUT", "-H", "X-My-Header: false") == denied()
        assert curl(lab, pod, f"{url}/path2", *header) == denied()  # GET
        assert curl(lab, pod, f"{url}/path1", "-X", "PUT", *header) == denied()
        assert curl(lab, pod, f"{url}/path1/x") == denied()
        assert curl(lab, pod, f"{url}/path1?x=1") == denied()


@pytest.mark.parametrize(
    "path", ["/public/../private", "/public/%2e%2e/private", "/public/..%2Fprivate", "//private"]
)
def test_path_tricks_denied(lab: Lab, tmp_path: Path, path: str) -> None:
    apply(tmp_path, extra={"public-subtree.yaml": PUBLIC_SUBTREE})
    assert curl(lab, "client-prod", "http://service-svc/public") == ok(PUBLIC_PAGE)
    assert curl(lab, "client-prod", "http://service-svc/public/x")[:2] == (0, 404)  # allowed, not there
    assert curl(lab, "client-prod", f"http://service-svc{path}") == denied()


def test_method_case_denied(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path, *SEED_POLICIES)
    # HTTP/1.1: Envoy's codec refuses a lower-case method (400); h2c: no route matches it (403).
    assert curl(lab, "client-prod", "http://service-svc/public", "-X", "get")[:2] == (0, 400)
    h2 = "--http2-prior-knowledge"
    assert curl(lab, "client-prod", "http://service-svc/public", "-X", "get", h2) == denied()
    assert curl(lab, "client-prod", "http://service-svc/public", h2) == ok(PUBLIC_PAGE)


SECRET_HEADER = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: token-from-secret}
spec:
  endpointSelector: {matchLabels: {app: service}}
  ingress:
  - fromEndpoints: [{matchLabels: {env: prod}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: /public
          headerMatches: [{name: X-Token, secret: {namespace: default, name: api-token}}]
"""


def test_header_match_secret_from_file(lab: Lab, tmp_path: Path) -> None:
    secret = agent_lab.agent_dir(lab.state) / "secrets" / "default" / "api-token"
    try:
        apply(tmp_path, extra={"secret.yaml": SECRET_HEADER})
        token = ("-H", "X-Token: s3cret")
        assert curl(lab, "client-prod", "http://service-svc/public", *token) == denied()  # no secret yet
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("s3cret\n")
        deadline = time.monotonic() + 10
        while curl(lab, "client-prod", "http://service-svc/public", *token) != ok(PUBLIC_PAGE):
            assert time.monotonic() < deadline, "the secret's value never reached Envoy"
            time.sleep(0.2)
        assert curl(lab, "client-prod", "http://service-svc/public", "-H", "X-Token: other") == denied()
        assert curl(lab, "client-prod", "http://service-svc/public") == denied()
    finally:
        secret.unlink(missing_ok=True)


def test_live_change_applies_to_keepalive_and_new_connections(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path, *SEED_POLICIES)
    ip = lab.pod("service-pod").ips[0]
    client = subprocess.Popen(
        lab.exec_argv("client-prod", [sys.executable, "-I", "-c", KEEPALIVE_CLIENT, ip, "80"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None

    def request(line: str) -> tuple[str, int, bytes]:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(line + "\n")
        client.stdin.flush()
        port, status, body = client.stdout.readline().split(" ", 2)
        return port, int(status), ast.literal_eval(body)

    try:
        port, status, body = request("GET /public")
        assert (status, body) == (200, PUBLIC_PAGE)
        assert request("GET /private")[1:] == (403, DENIED)
        apply(tmp_path, "002-l7-rule", extra={"private.yaml": PRIVATE_ONLY})
        assert request("GET /public") == (port, 403, DENIED)  # same connection, next request
        assert request("GET /private") == (port, 200, PRIVATE_PAGE)
    finally:
        client.stdin.close()
        try:
            client.wait(5)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
        client.stdout.close()
    assert curl(lab, "client-prod", "http://service-svc/private") == ok(PRIVATE_PAGE)
    assert curl(lab, "client-prod", "http://service-svc/public") == denied()


def test_envoy_outlives_its_agent_and_is_adopted(lab: Lab, tmp_path: Path) -> None:
    apply(tmp_path, *SEED_POLICIES)
    before = envoy_records(lab)["k8s-w1"]
    agent = agent_lab.agent_records(lab.state)["k8s-w1"]
    assert procs.stop(agent)
    # The agent is gone: Envoy keeps enforcing its last configuration.
    assert before.alive()
    assert curl(lab, "client-prod", "http://service-svc/public") == ok(PUBLIC_PAGE)
    assert curl(lab, "client-prod", "http://service-svc/private") == denied()
    _, seconds = agent_lab.restart_agent(NAME, "k8s-w1")
    print(f"agent restarted in {seconds:.2f}s")
    status = json.loads(agent_lab.status_file(lab.state, "k8s-w1").read_text())["services"]["envoy"]
    assert status["pid"] == before.pid and status["adopted"] and status["running"], status
    assert envoy_records(lab)["k8s-w1"] == before
    assert _envoy_pids(before.config) == [before.pid]  # adopted, no second Envoy
    assert curl(lab, "client-prod", "http://service-svc/public") == ok(PUBLIC_PAGE)
    assert curl(lab, "client-prod", "http://service-svc/private") == denied()


def _envoy_pids(config_part: str) -> list[int]:
    """Envoy processes whose command line mentions ``config_part``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if argv[0].endswith("/envoy") and any(config_part in a for a in argv):
                out.append(int(entry.name))
    return out
