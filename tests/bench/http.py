"""HTTP through l7gate's Envoy: throughput and latency vs direct vs a plain Envoy, and the time from a
policy change to the first request that gets the new verdict.

(1) Throughput — a one-node lab (``hxb<pid>``, the lab's own addresses): pod ``client`` runs wrk
    (keep-alive, 1 thread, 16 connections) against pod ``server``, whose backend is an Envoy answering
    every request with a fixed 200 (so the backend is never the bottleneck).

    - l7gate: a CiliumNetworkPolicy with an HTTP rule on the server's port 80; the datapath redirects
      to the node agent's Envoy (transparent listener, original_dst, the translator's routes).
    - plain Envoy: a second Envoy in the node namespace with the *same* listener filters and route
      configuration, but static (inline routes, a STATIC cluster to the server, no original_dst); wrk
      targets its port on the node address. Its upstream sockets carry the same SO_MARK.
    - direct: the policy removed, wrk straight to the server (through the datapath, no proxy).

    Rounds alternate l7gate and plain Envoy (which goes first alternates too); the figure is the median
    requests/s, the ratio l7gate / plain Envoy (target >= 0.9); the per-round ratios are in the details.

(2) Is ``xds_encode``.

(3) Policy change → first new verdict — the agent's Envoy service (``l7.agent.envoy.EnvoyService``)
    with its Envoy in a router namespace between a client and a backend namespace (nft tproxy stands
    in for the datapath's redirect, as in tests/xds/test_envoy.py). A client thread sends requests
    back to back on one keep-alive connection; the rules flip 50 times between allowing and denying
    its path (RDS-only updates). Latency = publish start → the first response with the new verdict.
    Target p99 <= 100 ms.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from tests.bench.common import Figure, Options, sh, stop

NAME = "http"
RATIO_TARGET = 0.9
CHANGE_TARGET_MS = 100.0
PLAIN_PORT = 28080  # outside the proxy port range: pods may not reach those on a node address
BODY = "hello from the backend\n"
BACKEND_PY = Path(__file__).resolve().parents[1] / "xds" / "backend.py"


def _repo_first() -> None:
    repo = str(Path(__file__).resolve().parents[2])
    if sys.path[:1] != [repo]:
        sys.path.insert(0, repo)


# ----------------------------------------------------------------------------------- Envoy configs
def backend_config(admin: str) -> dict[str, Any]:
    """A static Envoy answering 200 ``BODY`` on [::]:80 (dual stack) and 0.0.0.0:80."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "backend",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "any",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": BODY}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "admin": {"address": {"pipe": {"path": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "backend",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
                }
            ]
        },
    }


def plain_config(server_ip: str, admin: str, access_log: str) -> dict[str, Any]:
    """The l7gate listener and routes for the bench rule, made static (see the module docstring)."""
    _repo_first()
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )
    from google.protobuf import json_format  # type: ignore[import-untyped]

    from bpf.maps import MARK_FROM_PROXY
    from l7xds.translate import ProxySettings, build_cluster, build_listener, build_route_configuration

    settings = ProxySettings(upstream_mark=MARK_FROM_PROXY, access_log_path=access_log)
    listener = build_listener(PLAIN_PORT, "plain", settings)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    hcm.ClearField("rds")
    hcm.route_config.CopyFrom(build_route_configuration("plain", bench_rules(), settings))
    listener.filter_chains[0].filters[0].typed_config.Pack(hcm)
    listener.ClearField("transparent")
    listener.ClearField("listener_filters")
    cluster = build_cluster(settings)
    cluster.type = cluster.STATIC
    cluster.lb_policy = cluster.ROUND_ROBIN
    endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.socket_address.address = server_ip
    endpoint.address.socket_address.port_value = 80
    cluster.load_assignment.cluster_name = cluster.name
    return {
        "admin": {"address": {"pipe": {"path": admin}}},
        "static_resources": {
            "listeners": [json_format.MessageToDict(listener)],
            "clusters": [json_format.MessageToDict(cluster)],
        },
    }


def bench_rules() -> tuple[Any, ...]:
    _repo_first()
    from l7.policy.model import HTTPRule

    return (HTTPRule(method="GET", path="^/api(/.*)?$"),)


POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-http}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "^/api(/.*)?$"}]
"""


# ------------------------------------------------------------------------------------------- wrk
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str) -> dict[str, float]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise RuntimeError(f"no wrk result: {text[-500:]}")
    out = {"rps": float(rps.group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m is not None:
            out[f"p{pct}_ms"] = round(float(m.group(1)) * _UNITS[m.group(2)], 3)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    return out


def wrk(lab: Any, url: str, seconds: int, connections: int = 16) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    proc = lab.exec("client", argv, timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr[-500:]}")
    return parse_wrk(proc.stdout)


@contextlib.contextmanager
def throughput_lab(work: Path) -> Iterator[Any]:
    _repo_first()
    from l7.lab import Lab, down
    from l7.lab.topology import parse_topology
    from l7xds.envoy_process import envoy_binary

    name = f"hxb{os.getpid() % 100000}"
    backend = work / "backend.json"
    backend.write_text(json.dumps(backend_config(f"/tmp/{name}-backend-admin.sock")))
    topology = {
        "description": "l7gate HTTP bench",
        "nodes": [{"name": "n1"}],
        "pods": [
            {"name": "client", "labels": {"app": "client"}, "node": "n1"},
            {
                "name": "server",
                "labels": {"app": "server"},
                "node": "n1",
                "commands": [
                    [str(envoy_binary()), "-c", str(backend), "--disable-hot-restart", "--log-level", "error"]
                ],
            },
        ],
    }
    try:
        yield Lab.up(parse_topology(topology, "<bench http>"), name)
    finally:
        down(name)


def measure_throughput(opts: Options) -> dict[str, Any]:
    _repo_first()
    from l7.lab import agents as agent_lab
    from l7xds.envoy_process import EnvoyAdmin, EnvoyProcess

    seconds = 1 if opts.quick else 2
    rounds = 1 if opts.quick else 7
    with tempfile.TemporaryDirectory(prefix="hxb-") as tmp, throughput_lab(Path(tmp)) as lab:
        work = Path(tmp)
        server = lab.pod("server").v4
        node = lab.plan.node("n1")
        url = f"http://{server}/api/items"
        deadline = time.monotonic() + 20
        while lab.exec("client", ["curl", "-s", "-m", "1", url], timeout=10).stdout != BODY:
            if time.monotonic() > deadline:
                raise RuntimeError("the backend Envoy does not answer")
            time.sleep(0.2)
        direct = [wrk(lab, url, seconds)]
        policies = work / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(POLICY)
        agent_lab.apply(lab.name, policies)
        denied = lab.exec("client", ["curl", "-s", "-m", "2", f"http://{server}/other"], timeout=10).stdout
        if denied.strip() != "Access denied":
            raise RuntimeError(f"the policy is not enforced through Envoy: {denied!r}")
        config = work / "plain.json"
        admin = f"unix:{work}/plain-admin.sock"
        config.write_text(
            json.dumps(plain_config(server, admin.removeprefix("unix:"), str(work / "plain.log")))
        )
        plain = EnvoyProcess.start(
            config, work / "plain", argv_prefix=["nsenter", f"--net=/run/netns/{node.netns}"]
        )
        admin_client = EnvoyAdmin(admin)
        try:
            plain.wait_ready(admin_client)
            plain_url = f"http://{node.router_v4}:{PLAIN_PORT}/api/items"
            if lab.exec("client", ["curl", "-s", "-m", "2", plain_url], timeout=10).stdout != BODY:
                raise RuntimeError("the plain Envoy does not forward")
            l7gate: list[dict[str, float]] = []
            plain_runs: list[dict[str, float]] = []
            for i in range(rounds):  # alternate which goes first: load from elsewhere hits both alike
                pair = [(l7gate, url), (plain_runs, plain_url)]
                for runs, target in pair if i % 2 == 0 else pair[::-1]:
                    runs.append(wrk(lab, target, seconds))
        finally:
            admin_client.close()
            plain.stop()
        empty = work / "empty"
        empty.mkdir()
        agent_lab.apply(lab.name, empty)
        direct.append(wrk(lab, url, seconds))
    return {"seconds": seconds, "direct": direct, "l7gate": l7gate, "plain": plain_runs}


# ---------------------------------------------------------------------------- policy change latency
class _Client(threading.Thread):
    """Back-to-back GETs on one keep-alive connection from the client namespace: (time, status)."""

    def __init__(self, netns: str, host: str, path: str) -> None:
        super().__init__(name="bench-client", daemon=True)
        self.netns, self.host, self.path = netns, host, path
        self.seen: list[tuple[float, int]] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from tests.datapath.netlab import in_netns

        try:
            conn = http.client.HTTPConnection(self.host, 80, timeout=5)
            with in_netns(self.netns):
                conn.connect()
            while not self.stopping.is_set():
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                self.seen.append((time.monotonic(), response.status))
        except BaseException as exc:  # noqa: BLE001  (reported by the measuring thread)
            self.error = exc


def measure_changes(opts: Options) -> dict[str, Any]:
    _repo_first()
    from l7.agent.envoy import EnvoyService
    from l7.agent.services import ServiceHost
    from l7.policy.model import HTTPRule
    from tests.xds.test_envoy import BACKEND4, PORT, _build_namespaces

    changes = 10 if opts.quick else 50
    prefix = f"hxc-{secrets.token_hex(3)}"
    client_ns, router, backend = f"{prefix}-c", f"{prefix}-r", f"{prefix}-b"
    allow = (HTTPRule(method="GET", path="/public"),)
    deny = (HTTPRule(method="GET", path="/other"),)
    with contextlib.ExitStack() as cleanup, tempfile.TemporaryDirectory(prefix="hxc-") as tmp:
        for ns in (backend, router, client_ns):
            cleanup.callback(sh, "ip", "netns", "delete", ns, check=False)
        _build_namespaces(client_ns, router, backend)
        ready = Path(tmp) / "backend.ready"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", backend, sys.executable, str(BACKEND_PY), str(ready)],
            start_new_session=True,
        )
        cleanup.callback(stop, proc)
        deadline = time.monotonic() + 10
        while not ready.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("backend not ready")
            time.sleep(0.02)

        class Host:
            node = "bench"
            state_dir = Path(tmp)
            lock = threading.RLock()

        service = EnvoyService(argv_prefix=("nsenter", f"--net=/run/netns/{router}"))
        service.start(cast(ServiceHost, Host()))
        cleanup.callback(service.stop_envoy)
        cleanup.callback(service.close)
        if not service.publish({PORT: allow}):
            raise RuntimeError("Envoy did not take the first configuration")
        client = _Client(client_ns, BACKEND4, "/public")
        client.start()
        cleanup.callback(client.join, 10)
        cleanup.callback(client.stopping.set)
        while not client.seen:
            if client.error is not None:
                raise RuntimeError(f"client: {client.error}")
            time.sleep(0.01)
        latencies, acks = [], []
        for i in range(changes):
            rules, want = (deny, 403) if i % 2 == 0 else (allow, 200)
            start = time.monotonic()
            mark = len(client.seen)
            if not service.publish({PORT: rules}):
                raise RuntimeError(f"change {i}: not ACKed")
            acks.append(time.monotonic() - start)
            deadline = time.monotonic() + 5
            while True:
                hit = next((t for t, status in client.seen[mark:] if status == want), None)
                if hit is not None:
                    break
                if client.error is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"change {i}: no new verdict ({client.error})")
                time.sleep(0.001)
            latencies.append(hit - start)
            time.sleep(0.05)
    return {"latencies": latencies, "acks": acks, "requests": len(client.seen)}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(opts: Options) -> list[Figure]:
    figures: list[Figure] = []
    tp = measure_throughput(opts)
    rps = {k: statistics.median(r["rps"] for r in tp[k]) for k in ("direct", "l7gate", "plain")}
    lat = {k: {p: statistics.median(r.get(p, 0.0) for r in tp[k]) for p in ("p50_ms", "p99_ms")} for k in rps}
    errors = sum(r["non_2xx"] for k in ("l7gate", "plain") for r in tp[k])
    figures.append(
        Figure(
            name="HTTP requests/s through l7gate's Envoy (wrk, 16 keep-alive connections)",
            value=round(rps["l7gate"]),
            unit="req/s",
            baseline=round(rps["plain"]),
            baseline_name="plain Envoy, static config",
            target=f">= {RATIO_TARGET} x plain Envoy",
            met=rps["l7gate"] >= RATIO_TARGET * rps["plain"] and errors == 0,
            best=round(max(r["rps"] for r in tp["l7gate"])),
            details={
                "direct_rps": round(rps["direct"]),
                "round_ratios": [
                    round(a["rps"] / b["rps"], 3) for a, b in zip(tp["l7gate"], tp["plain"], strict=True)
                ],
                "latency_ms": lat,
                "runs": tp,
                "non_2xx": errors,
            },
        )
    )
    figures.append(
        Figure(
            name="HTTP p99 latency through l7gate's Envoy (wrk, 16 connections)",
            value=lat["l7gate"]["p99_ms"],
            unit="ms",
            baseline=lat["plain"]["p99_ms"],
            baseline_name="plain Envoy, static config",
            details={"p50_ms": lat, "direct_p99_ms": lat["direct"]["p99_ms"]},
        )
    )
    ch = measure_changes(opts)
    ms = [x * 1000 for x in ch["latencies"]]
    p50, p99 = statistics.median(ms), _pct(ms, 0.99)
    figures.append(
        Figure(
            name=f"Policy change → first new verdict (p99 of {len(ms)} RDS updates, keep-alive)",
            value=round(p99, 2),
            unit="ms",
            target=f"<= {CHANGE_TARGET_MS:g} ms",
            met=p99 <= CHANGE_TARGET_MS,
            details={
                "p50_ms": round(p50, 2),
                "max_ms": round(max(ms), 2),
                "ack_p50_ms": round(statistics.median(ch["acks"]) * 1000, 2),
                "ack_p99_ms": round(_pct(ch["acks"], 0.99) * 1000, 2),
                "requests": ch["requests"],
            },
        )
    )
    return figures


if __name__ == "__main__":
    for figure in run(Options(quick="--quick" in sys.argv)):
        print(json.dumps(figure.as_dict(), default=str))
