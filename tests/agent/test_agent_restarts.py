"""Restarts while traffic flows (seed 002 lab): the node agents are killed (SIGKILL) and stopped
(SIGTERM) and started again while a client keeps HTTP requests going through Envoy (L7 policy) and
over a plain L3/L4-allowed keep-alive connection, and a denied client keeps trying.

Nothing allowed may be cut (every request on the long-lived connections succeeds, no reconnect), and
nothing denied may get through (``/private`` is always 403, the dev client never connects). Enforcement
lives in the pinned datapath and in Envoy, which both outlive the agent.

The DNS proxy runs inside the agent; its listening sockets are held by a socket keeper, so queries sent
while the agent restarts queue up and are answered by the next agent: a steady query load sees no
failed query (only a pause as long as the restart).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import SEED_002_LAB, SEEDS

from l7.lab import Lab, down, procs
from l7.lab import agents as agent_lab

pytestmark = pytest.mark.root

NAME = f"rs{os.getpid() % 100000}"

WEBPOD_FROM_PROD = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: webpod-from-prod}
spec:
  endpointSelector: {matchLabels: {app: webpod}}
  ingress:
  - fromEndpoints: [{matchLabels: {env: prod}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""

# Runs inside client-prod: two keep-alive connections (through Envoy to service-pod, plain to webpod-1)
# used every 50 ms, plus new connections for /public (200) and /private (403), until the stop file
# exists. One JSON line at the end.
CLIENT = r"""
import http.client, json, os, sys, time
service, webpod, stop = sys.argv[1], sys.argv[2], sys.argv[3]
out = {"keepalive_ok": 0, "keepalive_fail": [], "public_ok": 0, "public_fail": [], "private_403": 0,
       "private_other": []}
l7 = http.client.HTTPConnection(service, 80, timeout=3)
l4 = http.client.HTTPConnection(webpod, 80, timeout=3)
def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()
n = 0
while not os.path.exists(stop):
    for name, conn, path in (("l7", l7, "/public"), ("l4", l4, "/")):
        try:
            status, _ = get(conn, path)
            if status == 200:
                out["keepalive_ok"] += 1
            else:
                out["keepalive_fail"].append(f"{name}: {status}")
        except Exception as exc:
            out["keepalive_fail"].append(f"{name}: {exc!r}")
            conn.close()
    if n % 4 == 0:
        for path in ("/public", "/private"):
            c = http.client.HTTPConnection(service, 80, timeout=3)
            try:
                status, body = get(c, path)
            except Exception as exc:
                status, body = None, repr(exc).encode()
            finally:
                c.close()
            if path == "/public":
                if status == 200:
                    out["public_ok"] += 1
                else:
                    out["public_fail"].append(status)
            elif status == 403 and body == b"Access denied\r\n":
                out["private_403"] += 1
            else:
                out["private_other"].append([status, body[:60].decode(errors="replace")])
    n += 1
    time.sleep(0.05)
print(json.dumps(out))
"""

# Runs inside client-dev: connection attempts to service-pod that must all fail.
DENIED = r"""
import json, os, socket, sys
ip, stop = sys.argv[1], sys.argv[2]
tries = connected = 0
while not os.path.exists(stop):
    tries += 1
    try:
        socket.create_connection((ip, 80), timeout=0.3).close()
        connected += 1
    except OSError:
        pass
print(json.dumps({"tries": tries, "connected": connected}))
"""


# Runs inside mediabot: one UDP query every 20 ms (a fresh socket each, so each is its own flow), as a
# stub resolver does it (resolv.conf defaults: 2 attempts; 3 s each here). Counts answers, queries that
# needed the second attempt, failures and the slowest answer.
QUERIES = r"""
import json, os, random, socket, struct, sys, time
server, stop = sys.argv[1], sys.argv[2]
name = b"".join(bytes([len(p)]) + p.encode() for p in "api.github.com".split(".")) + b"\0"
out = {"ok": 0, "retried": 0, "failed": [], "slowest_ms": 0.0}
def attempt():
    q = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(q, (server, 53))
        while True:
            data = s.recv(4096)
            if data[:2] == q[:2]:
                break
        rcode = data[3] & 0xF
        return "ok" if rcode == 0 and struct.unpack("!H", data[6:8])[0] > 0 else f"rcode {rcode}"
    except OSError as exc:
        return repr(exc)
    finally:
        s.close()
while not os.path.exists(stop):
    t0 = time.monotonic()
    first = attempt()
    result = first if first == "ok" else attempt()
    if first != "ok":
        out["retried"] += 1
    if result == "ok":
        out["ok"] += 1
    else:
        out["failed"].append([first, result])
    out["slowest_ms"] = max(out["slowest_ms"], round((time.monotonic() - t0) * 1000, 1))
    time.sleep(0.02)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    try:
        yield Lab.up(SEED_002_LAB, NAME)
    finally:
        down(NAME)


def _python(lab: Lab, pod: str, script: str, *args: str) -> subprocess.Popen[str]:
    argv = lab.exec_argv(pod, ["python3", "-c", script, *args])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    data: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return data


def _kill_and_restart(node: str, sig: int, downtime: float = 0.5) -> float:
    rec = agent_lab.agent_records(Lab.load(NAME).state)[node]  # the current agent (restarts replace it)
    os.kill(rec.pid, sig)  # the agent this lab started (recorded pid)
    deadline = time.monotonic() + 10
    while procs.alive(rec) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not procs.alive(rec), f"agent of {node} ignored signal {sig}"
    time.sleep(downtime)  # the node runs without an agent for a while
    _, seconds = agent_lab.restart_agent(NAME, node)
    return seconds


def test_agent_restarts_cut_nothing_allowed_and_open_nothing_denied(lab: Lab, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "public.yaml").write_text((SEEDS / "002-allow-public-from-prod.yaml").read_text())
    (policies / "webpod.yaml").write_text(WEBPOD_FROM_PROD)
    agent_lab.apply(NAME, policies)
    service = lab.pod("service-pod").ips[0]
    webpod = lab.pod("webpod-1").ips[0]
    stop = tmp_path / "stop"  # pods share the file system: the clients run until it exists
    client = _python(lab, "client-prod", CLIENT, service, webpod, str(stop))
    denied = _python(lab, "client-dev", DENIED, service, str(stop))
    try:
        time.sleep(1.0)  # under test: traffic flows (the clients count it) before the first restart
        restarts = []
        for node, sig in (("k8s-w1", signal.SIGKILL), ("k8s-w2", signal.SIGKILL), ("k8s-w1", signal.SIGTERM)):
            restarts.append((node, sig, _kill_and_restart(node, sig)))
        time.sleep(1.0)  # under test: traffic after the last restart is judged as before
        stop.touch()
        got = _result(client, 30)
        dev = _result(denied, 30)
    finally:
        for p in (client, denied):
            if p.poll() is None:
                p.kill()
                p.communicate()
    print(f"restarts (node, signal, ready seconds): {restarts}; client {got}; dev {dev}")
    assert got["keepalive_fail"] == [] and got["public_fail"] == [] and got["private_other"] == [], got
    assert isinstance(got["keepalive_ok"], int) and got["keepalive_ok"] > 100, got
    assert isinstance(got["private_403"], int) and got["private_403"] > 10, got
    assert dev["connected"] == 0 and isinstance(dev["tries"], int) and dev["tries"] > 5, dev


def test_dns_queries_survive_agent_restarts(lab: Lab, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "fqdn.yaml").write_text((SEEDS / "002-fqdn.yaml").read_text())
    agent_lab.apply(NAME, policies)
    server = _resolver(lab, "mediabot")
    stop = tmp_path / "stop"
    load = _python(lab, "mediabot", QUERIES, server, str(stop))
    try:
        time.sleep(1.0)  # under test: queries flow (the client counts them) before the first restart
        restarts = []
        # mediabot's node: its DNS proxy restarts. Killed: queries queue in the kept sockets until the
        # next agent serves them (one in flight may need the second attempt). Graceful: none waits.
        restarts.append(("SIGKILL", _kill_and_restart("k8s-w2", signal.SIGKILL, downtime=0.0)))
        time.sleep(1.0)  # under test: queries flow between the two restarts
        _, seconds = agent_lab.restart_agent(NAME, "k8s-w2", graceful=True)
        restarts.append(("graceful", seconds))
        time.sleep(1.0)  # under test: queries flow after the graceful restart
        stop.touch()
        got = _result(load, 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.communicate()
    print(f"DNS under restarts (kind, ready seconds): {restarts}; {got}")
    assert got["failed"] == [], got
    assert isinstance(got["retried"], int) and got["retried"] <= 2, got
    assert isinstance(got["ok"], int) and got["ok"] > 50, got


def _resolver(lab: Lab, pod: str) -> str:
    """The nameserver in the pod's resolv.conf (the lab's kube-dns)."""
    out = lab.exec(pod, ["cat", "/etc/resolv.conf"], timeout=10).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("nameserver"))


# Runs inside client-prod: new connections for /public and /private until the stop file exists;
# counts what came back (a request Envoy is not there for fails: its SYN finds no listener).
THROUGH_ENVOY = r"""
import http.client, json, os, sys, time
service, stop = sys.argv[1], sys.argv[2]
out = {"public": {}, "private": {}}
while not os.path.exists(stop):
    for path in ("/public", "/private"):
        c = http.client.HTTPConnection(service, 80, timeout=1)
        try:
            c.request("GET", path)
            r = c.getresponse()
            key = f"{r.status} {r.read()[:20]!r}"
        except Exception as exc:
            key = type(exc).__name__
        finally:
            c.close()
        out[path.strip("/")][key] = out[path.strip("/")].get(key, 0) + 1
    time.sleep(0.05)
print(json.dumps(out))
"""


def test_envoy_killed_fails_closed_and_comes_back(lab: Lab, tmp_path: Path) -> None:
    """SIGKILL of a node's Envoy while requests flow: requests fail (closed) until the agent's
    supervisor has it back, none is let through unjudged — /private never gets 200."""
    from l7.agent.envoy_files import EnvoyRecord

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "public.yaml").write_text((SEEDS / "002-allow-public-from-prod.yaml").read_text())
    agent_lab.apply(NAME, policies)
    record = EnvoyRecord.load(agent_lab.agent_dir(Lab.load(NAME).state) / "envoy-k8s-w1.pid")
    assert record is not None and record.alive()
    stop = tmp_path / "stop"
    client = _python(lab, "client-prod", THROUGH_ENVOY, lab.pod("service-pod").ips[0], str(stop))
    try:
        time.sleep(1.0)  # under test: requests flow (the client counts them) before Envoy is killed
        os.kill(record.pid, signal.SIGKILL)  # the Envoy the lab's agent started (PID + start time)
        deadline = time.monotonic() + 20
        while True:
            new = EnvoyRecord.load(agent_lab.agent_dir(Lab.load(NAME).state) / "envoy-k8s-w1.pid")
            if new is not None and new.pid != record.pid and new.alive():
                break
            assert time.monotonic() < deadline, "the agent did not restart Envoy"
            time.sleep(0.1)
        time.sleep(3.0)  # under test: requests succeed again once the new Envoy has its listeners (the client
        # reports only at the end, so the test gives it this long with the new Envoy)
        stop.touch()
        got = _result(client, 30)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    print(f"through a killed Envoy: {got}")
    public, private = got["public"], got["private"]
    assert isinstance(public, dict) and isinstance(private, dict)
    assert not any(k.startswith("200") for k in private), private  # never let through
    assert all(k.startswith("403") or not k[0].isdigit() for k in private), private
    assert sum(n for k, n in public.items() if k.startswith("200")) > 20, public  # before and after
