"""``l7gate bpf policy get``: the entries a real datapath holds, read back through the CLI from the pins.

Needs root: a datapath is loaded for a node of its own (a private network namespace, its own pin
directory), entries are written with :class:`bpf.datapath.Datapath`, and the command reads them without
compiling anything. Everything is removed afterwards, even on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l7.cli import app, register

register()

ENDPOINTS = """\
namespaces: {shop: {labels: {}}}
nodes: [{name: n1, ips: [192.168.50.1]}]
endpoints:
  - {name: client, namespace: shop, labels: {app: client}, ips: [10.77.0.10], node: n1}
  - {name: web, namespace: shop, labels: {app: web}, ips: [10.77.0.11], node: n1}
"""
DNS_PORT, ENVOY_PORT = 12053, 12080


@pytest.fixture
def datapath(tmp_path: Path) -> Iterator[tuple[object, str, Path]]:
    if os.geteuid() != 0:
        pytest.fail("bpf policy get needs root (a loaded datapath); CI runs it as root")
    from bpf.datapath import BPFFS, PIN_ROOT, Datapath
    from bpf.loader import unpin

    if not os.path.ismount(BPFFS):
        subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)
    name = f"l7gbpt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    dp = None
    try:
        dp = Datapath.open(name, netns=f"/run/netns/{name}", ct_max=1024)
        yield dp, name, tmp_path
    finally:
        if dp is not None:
            dp.destroy()
        unpin(PIN_ROOT / name)
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_entries_in_human_form(datapath: tuple[object, str, Path]) -> None:
    from bpf.datapath import Datapath
    from bpf.maps import IDENTITY_HOST, IDENTITY_WORLD, Action, Direction
    from bpf.policy_entries import PolicyDecision, policy_entries
    from l7.node_view import load_inputs, node_view

    dp, name, tmp = datapath
    assert isinstance(dp, Datapath)
    (tmp / "endpoints.yaml").write_text(ENDPOINTS)
    (tmp / "policies").mkdir()
    (tmp / "agent-n1.json").write_text(
        json.dumps({"node": "n1", "datapath": name, "services": {"dns": {"ports": [DNS_PORT]}}})
    )
    view = node_view(tmp, load_inputs(tmp / "policies", tmp / "endpoints.yaml"), "n1")
    ids = {r.endpoint.key: r.endpoint.identity for r in view.resolved.endpoints}
    dp.set_endpoint(0, 7, ids["shop/client"], egress_enforced=True)
    dp.set_ipcache("10.77.0.10/32", ids["shop/client"], 7)
    decisions = [
        PolicyDecision(Direction.EGRESS, ids["shop/web"], 6, 8080, 8080, Action.REDIRECT, ENVOY_PORT),
        PolicyDecision(Direction.EGRESS, 0, 17, 53, 53, Action.REDIRECT, DNS_PORT),
        PolicyDecision(Direction.EGRESS, IDENTITY_HOST, 6, 8000, 8003, Action.ALLOW),
        PolicyDecision(Direction.EGRESS, IDENTITY_WORLD, None, action=Action.DENY),
    ]
    dp.sync_policy(7, decisions)
    base = ["bpf", "policy", "get", "--state-dir", str(tmp), "--policies", str(tmp / "policies")]
    base += ["--endpoints", str(tmp / "endpoints.yaml")]
    result = CliRunner().invoke(app, [*base[:3], "shop/client", *base[3:], "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["endpoint"], data["endpoint_id"], data["identity"]) == ("shop/client", 7, ids["shop/client"])
    assert (data["egress_enforced"], data["ingress_enforced"]) == (True, False)
    got = {
        (
            e["peer_identity"],
            e["protocol"],
            e["port"],
            e["port_end"],
            e["action"],
            e["proxy_port"],
            e["proxy"],
        )
        for e in data["entries"]
    }
    # every entry of the map (the any-peer DNS redirect is merged into each peer's own entries)
    assert len(got) == len(data["entries"]) == len(policy_entries(decisions))
    assert {
        (0, "UDP", 53, 53, "redirect", DNS_PORT, "DNS proxy"),
        (ids["shop/web"], "UDP", 53, 53, "redirect", DNS_PORT, "DNS proxy"),
        (IDENTITY_WORLD, "ANY", None, None, "deny", None, None),
        (IDENTITY_HOST, "TCP", 8000, 8003, "allow", None, None),
        (ids["shop/web"], "TCP", 8080, 8080, "redirect", ENVOY_PORT, "Envoy"),
    } <= got
    labels = {e["peer_identity"]: e["peer_labels"] for e in data["entries"]}
    assert labels[0] == ["(any peer)"] and labels[IDENTITY_WORLD] == ["reserved:world"]
    assert labels[IDENTITY_HOST] == ["reserved:host"]
    assert "k8s:app=web" in labels[ids["shop/web"]]

    table = CliRunner().invoke(app, [*base[:3], "7", *base[3:]])  # by endpoint id, table form
    assert table.exit_code == 0, table.output
    assert table.output.startswith(f"endpoint shop/client (id 7, identity {ids['shop/client']}) on node n1")
    assert f"{ENVOY_PORT} (Envoy)" in table.output and "8000-8003" in table.output

    missing = CliRunner().invoke(app, [*base[:3], "shop/web", *base[3:]])  # no entry in the datapath
    assert missing.exit_code == 1 and "no endpoint entry in datapath" in missing.output
