"""Adversarial: the node's proxy ports are never reachable directly, at any moment, through a real lab.

Reuses the one-node lab of ``tests/agent/test_agent_proxy_ports.py`` (Envoy for seed 002's L7 rule, the
DNS proxy for the client's DNS rule, the client allowed *everything* to the host). While a prober in
``client-prod`` connects over and over (TCP, and UDP DNS queries) to every port proxy ports are chosen
from first (10000–10015: the Envoy and DNS ports in use, the next ones a policy change would take) on
the node's router addresses (v4 and v6), the test: adds a policy whose L7 rule takes a new Envoy port,
restarts Envoy (SIGKILL; the agent's supervisor starts it again), rolls the agent out gracefully and
with SIGKILL, and removes the policy again (its listener is retired). No probe may ever connect or get
an answer from a proxy port; the redirected request still gets 200 at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from l7.agent.envoy_files import listening_ports
from l7.lab import Lab
from l7.lab import agents as agent_lab
from tests.agent import fqdn_helpers as fh
from tests.agent.test_agent_http import envoy_records
from tests.agent.test_agent_proxy_ports import (
    NAME,
    NODE,
    PUBLIC_PAGE,
    client_policy,
    dns_ports,
    envoy_ports,
    lab,  # noqa: F401 (the module's lab fixture)
)

pytestmark = pytest.mark.root

# Probes every (ip, port) listed in the file argv[1] (read again every round) with a TCP connect and a
# UDP DNS query (0.15 s each) until stdin closes (and at least MIN_ROUNDS rounds); prints
# "ok tcp|udp IP PORT" for every answer a proxy port gave (refusals and timeouts are silent), then how
# many rounds it made.
PROBER = r"""
import select, socket, sys
MIN_ROUNDS = 4  # whatever the steps took: the last rounds probe after the retirement
def targets():
    with open(sys.argv[1]) as f:
        return [(ip, int(p)) for ip, p in (t.split(",") for t in f.read().split())]
q = bytes.fromhex("abcd01000001000000000000") + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
rounds = 0
while rounds < MIN_ROUNDS or not select.select([sys.stdin], [], [], 0)[0]:
    rounds += 1
    for ip, port in targets():
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(fam, kind); s.settimeout(0.15)
            try:
                if kind == socket.SOCK_STREAM:
                    s.connect((ip, port)); print("ok tcp", ip, port, flush=True)
                else:
                    s.sendto(q, (ip, port)); s.recvfrom(2048); print("ok udp", ip, port, flush=True)
            except OSError:
                pass
            finally:
                s.close()
print("rounds", rounds, flush=True)
"""


def extra_policy() -> dict[str, Any]:
    """An L7 rule in another policy: a union of its own, so a new Envoy port."""
    return fh.cnp(
        "client-private",
        "default",
        {
            "endpointSelector": {"matchLabels": {"env": "prod"}},
            "egress": [
                {
                    "toEndpoints": [{"matchLabels": {"app": "service"}}],
                    "toPorts": [
                        {
                            "ports": [{"port": "80", "protocol": "TCP"}],
                            "rules": {"http": [{"method": "GET", "path": "/private"}]},
                        }
                    ],
                }
            ],
        },
    )


def envoy_pid(built: Lab) -> int:
    record = envoy_records(built).get(NODE)
    assert record is not None and record.alive()
    return record.pid


def wait_new_envoy(built: Lab, old: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = envoy_records(built).get(NODE)
        if record is not None and record.pid != old and record.alive() and listening_ports(record.pid):
            return
        time.sleep(0.2)
    raise AssertionError("Envoy was not started again")


def test_proxy_ports_are_never_reachable_directly(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    built = lab
    node = built.plan.node(NODE)
    in_use = set(envoy_ports(built)) | set(dns_ports(built))
    listed = tmp_path / "targets"

    def probe(ports: set[int]) -> None:
        tmp = tmp_path / "targets.new"
        tmp.write_text(
            " ".join(f"{ip},{port}" for ip in (node.router_v4, node.router_v6) for port in sorted(ports))
        )
        tmp.replace(listed)

    probe(in_use)
    client = built.pod("default/client-prod")
    prober = subprocess.Popen(
        ["ip", "netns", "exec", client.netns, sys.executable, "-I", "-c", PROBER, str(listed)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    steps: list[str] = []
    try:
        fh.apply(
            NAME, tmp_path, fh.seed("002-allow-public-from-prod", "default"), client_policy(), extra_policy()
        )
        new = set(envoy_ports(built)) - in_use
        assert new, "the new policy took no new Envoy port"
        probe(in_use | new)
        steps.append(f"policy added: Envoy ports {sorted(envoy_ports(built))}")
        old = envoy_pid(built)
        os.kill(old, signal.SIGKILL)
        wait_new_envoy(built, old)
        steps.append("Envoy killed and started again")
        agent_lab.rollout_agent(NAME, NODE)
        steps.append("agent rolled out (SIGTERM)")
        agent_lab.rollout_agent(NAME, NODE, kill=True)
        steps.append("agent rolled out (SIGKILL)")
        fh.apply(NAME, tmp_path, fh.seed("002-allow-public-from-prod", "default"), client_policy())
        steps.append(f"policy removed (retired: {sorted(new)})")
    finally:
        out, err = prober.communicate(input="", timeout=90)
    answered = [line for line in out.splitlines() if line.startswith("ok ")]
    assert prober.returncode == 0, err
    assert not answered, (answered, steps)
    assert "rounds" in out and int(out.split("rounds")[1]) >= 4, out
    service = built.pod("default/service-pod").ips[0]
    got = fh.run(built, "default/client-prod", ["curl", "-s", "-m", "3", f"http://{service}/public"])
    assert got.stdout == PUBLIC_PAGE
