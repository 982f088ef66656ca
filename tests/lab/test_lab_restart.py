"""``l7gate lab up`` and ``l7gate lab restart-agent`` through the CLI, under a steady DNS load.

A pod under a DNS rule (seed 002's ``fqdn`` policy: DNS through the node's proxy, ``toFQDNs:
api.github.com``) sends queries at a fixed rate (more than 50 a second), each followed by a TCP connection
to the address in the answer — a connection the datapath only allows because the DNS proxy wrote that
address before releasing the answer. Meanwhile the node's agent is restarted as a DaemonSet rollout does
(SIGTERM, then a new agent) and killed (SIGKILL, then a new agent). The DNS listening sockets stay with the
socket keeper, so queries sent while no agent runs wait in them: no query and no connection may fail
(a query may take the stub resolver's second attempt, as glibc does: 5 s each; the ones that did are
counted). The figures are printed (``-s``) for the issue.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from l7.lab import Lab, down

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
NAME = f"rr{os.getpid() % 100000}"
NODE = "node-1"
RATE = 60  # queries per second, each followed by a connection

TOPOLOGY = """
description: one node, a pod under a DNS rule, one external name
nodes:
  - name: node-1
pods:
  - name: mediabot
    labels: {org: empire, class: mediabot}
    ipv6: false
world:
  - {name: github-api, names: [api.github.com], servers: [http]}
"""

# Runs inside the pod: RATE queries a second on a fixed schedule (a fresh UDP socket each: each its own
# flow), each answer's first A record connected to on port 80. Progress (counts) goes to a file the test
# polls; the last line of stdout is the result.
LOAD = r"""
import asyncio, json, os, random, socket, struct, sys, time
server, rate, stop, progress = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
qname = b"".join(bytes([len(p)]) + p.encode() for p in "api.github.com".split(".")) + b"\0"
out = {"sent": 0, "ok": 0, "retried": 0, "retried_at": [], "failed": [], "conn_ok": 0, "conn_failed": []}
out["slowest_ms"] = 0.0

def answer_ip(data, qid):
    if len(data) < 12 or data[:2] != qid:
        return None
    if data[3] & 0xF:
        raise RuntimeError(f"rcode {data[3] & 0xF}")
    ancount = struct.unpack("!H", data[6:8])[0]
    i = 12 + len(qname) + 4
    for _ in range(ancount):
        if data[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while data[i]:
                i += data[i] + 1
            i += 1
        rtype, _, _, rdlen = struct.unpack("!HHIH", data[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            return socket.inet_ntoa(data[i:i + 4])
        i += rdlen
    raise RuntimeError("no A record")

async def one(loop):
    t0 = time.monotonic()
    qid = struct.pack("!H", random.randrange(65536))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    query = qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"
    ip = None
    try:
        for attempt in (1, 2):  # glibc's stub resolver: resolv.conf's timeout:5 attempts:2
            await loop.sock_sendto(s, query, (server, 53))
            try:
                while ip is None:
                    left = 5 * attempt - (time.monotonic() - t0)
                    data = await asyncio.wait_for(loop.sock_recv(s, 4096), left)
                    ip = answer_ip(data, qid)
                break
            except asyncio.TimeoutError:
                if attempt == 2:
                    raise
                out["retried"] += 1
                out["retried_at"].append(round(t0, 2))
    except Exception as exc:
        out["failed"].append(repr(exc))
        return
    finally:
        s.close()
    out["ok"] += 1
    out["slowest_ms"] = max(out["slowest_ms"], round((time.monotonic() - t0) * 1000, 1))
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, 80), 5)
        writer.close()
        await writer.wait_closed()
        out["conn_ok"] += 1
    except Exception as exc:
        out["conn_failed"].append(f"{ip}: {exc!r}")

async def main():
    loop = asyncio.get_running_loop()
    tasks = set()
    start = time.monotonic()
    last = 0.0
    while not os.path.exists(stop):
        out["sent"] += 1
        task = asyncio.ensure_future(one(loop))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        now = time.monotonic()
        if now - last > 0.2:
            with open(progress + ".tmp", "w") as f:
                json.dump({k: (len(v) if isinstance(v, list) else v) for k, v in out.items()}, f)
            os.replace(progress + ".tmp", progress)
            last = now
        await asyncio.sleep(max(0.0, start + out["sent"] / rate - time.monotonic()))
    out["seconds"] = round(time.monotonic() - start, 2)
    await asyncio.gather(*tasks)
    print(json.dumps(out))

asyncio.run(main())
"""


def l7gate(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "l7.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def lab_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    base = tmp_path_factory.mktemp("restart")
    (base / "lab.yaml").write_text(TOPOLOGY)
    policies = base / "policies"
    policies.mkdir()
    (policies / "fqdn.yaml").write_text((REPO / "deploy/examples/seeds/002-fqdn.yaml").read_text())
    try:
        done = l7gate("lab", "up", str(base / "lab.yaml"), "--lab", NAME, "--policies", str(policies))
        assert done.returncode == 0, done.stdout + done.stderr
        yield Lab.load(NAME), done.stdout
    finally:
        down(NAME)


def test_lab_up_shows_its_steps_and_its_real_total_time(lab_up: tuple[Lab, str]) -> None:
    _, out = lab_up
    print(out)
    assert not re.search(r"\w+\.py:\d+", out), out  # no file.py:line in the progress lines
    steps = [line for line in out.splitlines() if re.match(r"\s*\d+\.\d\ds ", line)]
    assert any("starting node agents" in s for s in steps), out
    assert any(f"agent of {NODE} started (pid" in s for s in steps), out
    ready = [float(s.split("s", 1)[0]) for s in steps if f"agent of {NODE} ready" in s]
    total = float(re.search(r"is up in (\d+\.\d+)s", out).group(1))  # type: ignore[union-attr]
    assert ready and total >= ready[0], out  # the total includes the agents
    rows = [line for line in out.splitlines() if re.search(rf"\bnode\b.*\b{NODE}\b", line)]
    assert rows, out
    listed = "\n".join(out.splitlines()[out.splitlines().index(rows[0]) :][:4])
    for what in ("agent", "envoy", "dns-keeper"):
        assert re.search(rf"{what} \d+ up", listed), listed


def _wait(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_restart_and_kill_lose_no_query_and_no_connection(lab_up: tuple[Lab, str], tmp_path: Path) -> None:
    lab, _ = lab_up
    resolver = next(
        line.split()[1]
        for line in lab.exec("mediabot", ["cat", "/etc/resolv.conf"]).stdout.splitlines()
        if line.startswith("nameserver")
    )
    stop, progress = tmp_path / "stop", tmp_path / "progress.json"  # pods share the file system
    load = subprocess.Popen(
        lab.exec_argv("mediabot", ["python3", "-c", LOAD, resolver, str(RATE), str(stop), str(progress)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def answered() -> int:
        try:
            data: dict[str, int] = json.loads(progress.read_text())
        except (OSError, ValueError):
            return 0
        return data["conn_ok"]

    restarts: list[str] = []
    try:
        _wait("the load flowing", lambda: answered() > RATE)
        for flag in ((), ("--kill",)):
            began = time.monotonic()
            done = l7gate("lab", "restart-agent", "--lab", NAME, NODE, *flag)
            restarts.append(f"[{began:.2f} .. {time.monotonic():.2f}]")
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"agent of {NODE} restarted" in done.stdout, done.stdout
            restarts.append(" ".join(done.stdout.split()))
            mark = answered()
            _wait("queries answered by the new agent", lambda m=mark: answered() > m + RATE)  # type: ignore[misc]
        stop.touch()
        out, err = load.communicate(timeout=30)
    finally:
        stop.touch()
        if load.poll() is None:
            load.kill()
            load.communicate()
    assert load.returncode == 0, err
    got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    rate = got["sent"] / got["seconds"]
    failures = sorted(set(got["failed"]))[:5]
    print(f"restarts (monotonic clock): {restarts}; failures: {failures}; retried at {got['retried_at']}")
    print(
        f"DNS load through a graceful restart and a kill: {got['sent']} queries in {got['seconds']}s "
        f"({rate:.0f}/s), {got['ok']} answered ({got['retried']} on the 2nd attempt), "
        f"{len(got['failed'])} failed; {got['conn_ok']} connections, {len(got['conn_failed'])} failed; "
        f"slowest answer {got['slowest_ms']} ms"
    )
    assert got["failed"] == [] and got["conn_failed"] == [], got
    assert got["ok"] == got["sent"] == got["conn_ok"], got
    assert rate >= 50, got


@pytest.mark.parametrize("argv", [["--lab", "no-such-lab", NODE], ["--lab", NAME, "no-such-node"]])
def test_restart_agent_of_a_missing_lab_or_node_is_a_usage_error(
    lab_up: tuple[Lab, str], argv: list[str]
) -> None:
    done = l7gate("lab", "restart-agent", *argv)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no lab named" in done.stderr or "no node 'no-such-node'" in done.stderr
