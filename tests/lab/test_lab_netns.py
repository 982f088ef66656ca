"""The lab for real: namespaces, veths, dnsmasq and servers, exercised with curl, dig and ping from pods.

One lab is built for the module (about a second); a second, smaller lab runs beside it. Every lab is taken
down in a finalizer, even when a test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from l7.lab import Lab, LabError, down, endpoints, parse_topology, procs
from l7.lab import ready as ready_mod
from l7.lab.state import lab_dir

pytestmark = pytest.mark.root

RUN = f"t{os.getpid() % 100000}"

TOPOLOGY = {
    "nodes": [{"name": "n1", "labels": {"zone": "a"}}, {"name": "n2"}],
    "namespaces": {"team": {"tier": "backend"}},
    "pods": [
        {
            "name": "web",
            "labels": {"app": "web"},
            "node": "n1",
            "server": {"kind": "http", "paths": {"/public": "public body\n", "/private": "private\n"}},
        },
        {"name": "who", "namespace": "team", "labels": {"app": "who"}, "node": "n2", "server": "whoami"},
        {"name": "client", "labels": {"env": "prod"}, "node": "n2"},
        {"name": "client", "namespace": "team", "labels": {"env": "dev"}, "node": "n1"},
        {"name": "v4only", "node": "n1", "ipv6": False, "server": "tcp-echo"},
    ],
    "services": [{"name": "websvc", "selector": {"app": "web"}}],
    "dns": {
        "node": "n2",
        "ttl": 42,
        "records": [
            {"name": "static.example.com", "a": ["192.168.77.5"], "aaaa": ["fd12::5"], "ttl": 77},
            {"name": "alias.example.com", "cname": "ext.example.com", "ttl": 300},
            {"name": "*.corp.example.com", "world": "ext"},
        ],
    },
    "world": [
        {"name": "ext", "names": ["ext.example.com", "api.github.com"], "ttl": 60,
         "servers": ["http", "https", "tcp-echo"]},
    ],
}  # fmt: skip

SMALL = {
    "nodes": [{"name": "n1"}],
    "pods": [{"name": "web", "labels": {"app": "web"}, "server": "whoami"}, {"name": "client"}],
    "world": [{"name": "ext", "names": ["ext.example.com"], "servers": ["http"]}],
}


def _leftovers(name: str) -> list[str]:
    prefix = f"l7g-{name}-"
    found = (
        [f"/run/netns/{n}" for n in os.listdir("/run/netns") if n.startswith(prefix)]
        if Path("/run/netns").exists()
        else []
    )
    if Path("/etc/netns").exists():
        found += [f"/etc/netns/{n}" for n in os.listdir("/etc/netns") if n.startswith(prefix)]
    if lab_dir(name).exists():
        found.append(str(lab_dir(name)))
    return found


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"{RUN}a"
    try:
        built = Lab.up(parse_topology(TOPOLOGY), name)
        yield built
    finally:
        down(name)


def sh(lab: Lab, pod: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return lab.exec(pod, list(argv), timeout=timeout)


def ok(lab: Lab, pod: str, *argv: str) -> str:
    proc = sh(lab, pod, *argv)
    assert proc.returncode == 0, f"{argv} in {pod}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_pods_ping_each_other_and_their_node(lab: Lab) -> None:
    web, who = lab.pod("web"), lab.pod("team/who")
    ok(lab, "default/client", "ping", "-c1", "-W2", web.v4)  # n2 → n1
    ok(lab, "default/client", "ping", "-c1", "-W2", who.v4)  # same node
    node = lab.plan.node("n2")
    ok(lab, "default/client", "ping", "-c1", "-W2", node.router_v4)
    ok(lab, "default/client", "ping", "-c1", "-W2", node.uplink_v4)
    ok(lab, "default/client", "ping", "-c1", "-W2", lab.plan.node("n1").uplink_v4)


def test_ipv6_between_pods(lab: Lab) -> None:
    web, who = lab.pod("web"), lab.pod("team/who")
    assert web.v6 is not None and who.v6 is not None
    ok(lab, "default/client", "ping", "-6", "-c1", "-W2", web.v6)
    out = ok(lab, "team/client", "curl", "-s", "-m", "3", f"http://[{who.v6}]/")
    assert f"RemoteAddr: [{lab.pod('team/client').v6}]:" in out
    assert lab.pod("v4only").v6 is None


@pytest.mark.parametrize(
    ("pod", "url"),
    [
        ("default/client", "http://web/public"),
        ("default/client", "http://web.default/public"),
        ("default/client", "http://web.default.svc.cluster.local/public"),
        ("default/client", "http://websvc/public"),
        ("team/client", "http://websvc.default/public"),
        ("team/client", "http://websvc.default.svc.cluster.local/public"),
    ],
)
def test_curl_by_cluster_names(lab: Lab, pod: str, url: str) -> None:
    assert ok(lab, pod, "curl", "-s", "-4", "-m", "3", url) == "public body\n"


def test_http_server_paths_and_whoami(lab: Lab) -> None:
    assert ok(lab, "default/client", "curl", "-s", "-m", "3", "http://web/private") == "private\n"
    code = ok(lab, "default/client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://web/nope")
    assert code == "404"
    out = ok(lab, "default/client", "curl", "-s", "-4", "-m", "3", "http://who.team/")
    assert out.startswith("Hostname: who\n")
    assert f"IP: {lab.pod('team/who').v4}\n" in out
    assert f"RemoteAddr: {lab.pod('default/client').v4}:" in out
    assert "GET / HTTP/1.1\nHost: who.team\n" in out


def _dig(lab: Lab, name: str, qtype: str) -> list[tuple[str, int, str, str]]:
    out = ok(lab, "default/client", "dig", "+noall", "+answer", "+time=2", name, qtype)
    rows = []
    for line in out.splitlines():
        owner, ttl, _cls, rtype, data = line.split(None, 4)
        rows.append((owner, int(ttl), rtype, data))
    return rows


def test_dns_records_with_ttls(lab: Lab) -> None:
    ext = lab.plan.world("ext")
    assert _dig(lab, "static.example.com", "A") == [("static.example.com.", 77, "A", "192.168.77.5")]
    assert _dig(lab, "static.example.com", "AAAA") == [("static.example.com.", 77, "AAAA", "fd12::5")]
    assert _dig(lab, "ext.example.com", "A") == [("ext.example.com.", 60, "A", ext.v4[0])]
    assert _dig(lab, "api.github.com", "AAAA") == [("api.github.com.", 60, "AAAA", ext.v6[0])]
    assert _dig(lab, "alias.example.com", "A") == [
        ("alias.example.com.", 300, "CNAME", "ext.example.com."),
        ("ext.example.com.", 60, "A", ext.v4[0]),
    ]
    assert _dig(lab, "x.corp.example.com", "A") == [("x.corp.example.com.", 42, "A", ext.v4[0])]
    assert _dig(lab, "a.b.corp.example.com", "AAAA") == [("a.b.corp.example.com.", 42, "AAAA", ext.v6[0])]
    assert _dig(lab, "corp.example.com", "A") == []
    web = lab.pod("web")
    assert {r[3] for r in _dig(lab, "websvc.default.svc.cluster.local", "A")} == {web.v4}
    assert {r[3] for r in _dig(lab, "web.default.svc.cluster.local", "AAAA")} == {web.v6}
    status = ok(lab, "default/client", "dig", "+time=2", "www.google.com")
    assert "status: NXDOMAIN" in status  # nothing leaves the lab


def test_resolver_is_the_lab_dns(lab: Lab) -> None:
    text = ok(lab, "team/client", "cat", "/etc/resolv.conf")
    assert f"nameserver {lab.pod('kube-system/kube-dns').v4}\n" in text
    assert "search team.svc.cluster.local svc.cluster.local cluster.local" in text


def test_world_host_http_https_and_echo(lab: Lab) -> None:
    assert ok(lab, "default/client", "curl", "-s", "-m", "3", "http://ext.example.com/") == "Hello from ext\n"
    assert ok(lab, "team/client", "curl", "-sk", "-m", "3", "https://api.github.com/x") == "Hello from ext\n"
    assert ok(lab, "team/client", "curl", "-sk", "-6", "-m", "3", "https://x.corp.example.com/") == (
        "Hello from ext\n"
    )
    echo = lab.exec("default/client", ["ncat", "-w", "2", "ext.example.com", "7"], input="ping\n", timeout=10)
    assert echo.stdout == "ping\n"
    echo4 = lab.exec("default/client", ["ncat", "-4", "-w", "2", "v4only", "7"], input="hi\n", timeout=10)
    assert echo4.stdout == "hi\n"


def test_exec_exit_status_passes_through(lab: Lab) -> None:
    assert sh(lab, "web", "sh", "-c", "exit 7").returncode == 7
    cli = [sys.executable, "-c", "from l7.cli import app, lab_cmds; app()", "lab", "exec", "--name", lab.name]
    status = subprocess.run([*cli, "web", "--", "sh", "-c", "exit 5"], timeout=20, check=False)
    assert status.returncode == 5
    proc = subprocess.run(
        [*cli, "team/client", "--", "curl", "-s", "-4", "websvc.default/public"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "public body\n")
    with pytest.raises(LabError, match="ambiguous"):
        lab.pod("client")


def test_endpoints_for_the_agent(lab: Lab) -> None:
    eps = endpoints(lab.state)
    by_key = {(e["namespace"], e["name"]): e for e in eps["endpoints"]}
    dns_ep = by_key[("kube-system", "kube-dns")]
    assert dns_ep["labels"]["k8s-app"] == "kube-dns" and dns_ep["node"] == "n2"
    who = by_key[("team", "who")]
    assert who["ips"] == lab.pod("team/who").ips
    assert set(who) == {"name", "namespace", "labels", "ips", "node", "serviceAccount", "ports"}
    assert eps["namespaces"]["team"] == {"labels": {"tier": "backend"}}
    assert {n["name"]: n["labels"] for n in eps["nodes"]} == {"n1": {"zone": "a"}, "n2": {}}
    assert eps["fqdns"]["api.github.com"] == lab.plan.world("ext").ips
    assert eps["fqdns"]["alias.example.com"] == lab.plan.world("ext").ips
    # the shape the node agent's endpoints file accepts
    from l7.endpoints import EndpointsFile

    EndpointsFile.model_validate(eps)
    where = lab.datapath()
    pod = next(p for p in where["pods"] if p["name"] == "who")
    assert pod["interface"].startswith("lxc") and pod["netns"] == lab.pod("team/who").netns


def test_two_labs_side_by_side_and_down_leaves_nothing(lab: Lab) -> None:
    name = f"{RUN}b"
    try:
        other = Lab.up(parse_topology(SMALL), name)
        assert other.plan.index != lab.plan.index
        out = ok(other, "client", "curl", "-s", "-4", "-m", "3", "http://web/")
        assert f"IP: {other.pod('web').v4}\n" in out
        assert ok(other, "client", "curl", "-s", "-m", "3", "http://ext.example.com/") == "Hello from ext\n"
        # the first lab still works, with its own addresses
        assert (
            ok(lab, "default/client", "curl", "-s", "-4", "-m", "3", "http://websvc/public")
            == "public body\n"
        )
        records = list(other.state.processes)
        assert records and all(procs.alive(r) for r in records)
    finally:
        down(name)
    assert _leftovers(name) == []
    assert not any(procs.alive(r) for r in records)
    assert down(name) == []  # idempotent


def test_down_after_a_failed_up(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{RUN}c"

    def crash(*_: object, **__: object) -> float:
        raise LabError("simulated crash while waiting")

    monkeypatch.setattr(ready_mod, "wait_all", crash)
    try:
        with pytest.raises(LabError, match="simulated"):
            Lab.up(parse_topology(SMALL), name, keep_on_failure=True)
        state = Lab.load(name).state
        assert state.phase == "failed" and state.processes
        assert _leftovers(name)
    finally:
        removed = down(name)
    assert any(r.startswith("netns") for r in removed)
    assert _leftovers(name) == []
    assert not any(procs.alive(r) for r in state.processes)
