"""DNS proxy: dnsperf through the transparent proxy vs dnsmasq answering directly, in one run.

Moved here from ``tests/dnsproxy/bench_dnsproxy.py``; same measurement, own lab. Needs root.

Lab (namespaces ``l7gb-<random>-{c,r,s}``, addresses 10.216.11.0/24 and 10.216.12.0/24 only inside
them): client ── veth ── router ── veth ── server (dnsmasq on 10.216.12.2:53, ``*.example.test`` →
10.216.9.9). "direct": the router just forwards; "proxy": an nft ``tproxy`` rule in the router hands
port 53 to N proxy worker processes (SO_REUSEPORT) that allow ``*.example.test``.

dnsperf (4 clients, 100 names, all allowed): max throughput for S seconds, then latency percentiles at
a fixed 5,000 qps (from ``dnsperf -v``). The direct run is taken before and after the proxy runs; the
baseline is their mean (max qps) or the first one (latency).

    .venv/bin/python -m tests.bench.dns_proxy [--workers 1,2] [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.common import Figure, Options, sh, stop

NAME = "dns_proxy"
PORT = 15353
SERVER = "10.216.12.2"
RATE = 5000
MIN_RATIO = 0.35
MAX_ADDED_P99_MS = 1.0
REPO = Path(__file__).resolve().parents[2]


# --- the proxy worker (a separate process in the router namespace) ---------------------------------


def worker(port: int) -> None:
    from dnsproxy import DNSProxy, Listeners, allow_names
    from l7.policy import fqdn

    async def main() -> None:
        def on_answer(source: str, qname: str, ips: tuple[tuple[str, int], ...]) -> None:
            return None

        proxy = DNSProxy(
            Listeners.create(port), allow_names([fqdn.match_pattern("*.example.test")]), on_answer
        )
        async with proxy:
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


# --- the lab ----------------------------------------------------------------------------------------


def _build(prefix: str, made: list[str]) -> dict[str, str]:
    names = {"client": f"{prefix}-c", "router": f"{prefix}-r", "server": f"{prefix}-s"}
    for ns in names.values():
        sh("ip", "netns", "add", ns)
        made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    c, r, s = names["client"], names["router"], names["server"]
    sh("ip", "-n", c, "link", "add", "c0", "type", "veth", "peer", "name", "rc", "netns", r)
    sh("ip", "-n", s, "link", "add", "s0", "type", "veth", "peer", "name", "rs", "netns", r)
    for ns, dev, addr in (
        (c, "c0", "10.216.11.2/24"),
        (r, "rc", "10.216.11.1/24"),
        (r, "rs", "10.216.12.1/24"),
        (s, "s0", f"{SERVER}/24"),
    ):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", c, "route", "add", "10.216.0.0/16", "via", "10.216.11.1")
    sh("ip", "-n", s, "route", "add", "10.216.0.0/16", "via", "10.216.12.1")
    sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "-n", r, "rule", "add", "fwmark", "1", "lookup", "100")
    sh("ip", "-n", r, "route", "add", "local", "default", "dev", "lo", "table", "100")
    return names


def _tproxy(router: str, on: bool) -> None:
    if on:
        sh(
            "ip",
            "netns",
            "exec",
            router,
            "nft",
            "-f",
            "-",
            stdin=f"""
table ip l7gb {{
  chain pre {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "rc" meta l4proto {{ tcp, udp }} th dport 53 meta mark set 0x1 tproxy to :{PORT} accept
  }}
}}
""",
        )
    else:
        sh("ip", "netns", "exec", router, "nft", "delete", "table", "ip", "l7gb")


def _wait_listening(ns: str, needle: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while needle not in sh("ip", "netns", "exec", ns, "ss", "-Hlun"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listening on {needle} in {ns}")
        time.sleep(0.1)


def _start_workers(router: str, count: int) -> list[subprocess.Popen[str]]:
    procs: list[subprocess.Popen[str]] = []
    for _ in range(count):
        procs.append(
            subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{router}",
                    sys.executable,
                    "-m",
                    "tests.bench.dns_proxy",
                    "--worker",
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        )
    deadline = time.monotonic() + 20
    for proc in procs:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready or proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"proxy worker {proc.pid} did not start (exit code {proc.poll()})")
    return procs


# --- dnsperf ----------------------------------------------------------------------------------------


def dnsperf_argv(client: str, datafile: str, seconds: int, *extra: str, server: str = SERVER) -> list[str]:
    """dnsperf in netns ``client`` (4 clients, 2 s query timeout) against ``server``."""
    argv = ["ip", "netns", "exec", client, "dnsperf", "-s", server, "-d", datafile, "-l", str(seconds)]
    return [*argv, "-c", "4", "-t", "2", *extra]


def _dnsperf(client: str, datafile: str, seconds: int, *extra: str, server: str = SERVER) -> str:
    return sh(*dnsperf_argv(client, datafile, seconds, *extra, server=server), timeout=seconds + 30)


def max_qps(client: str, datafile: str, seconds: int, server: str = SERVER) -> dict[str, float]:
    """dnsperf from netns ``client`` at full speed: queries per second and queries lost."""
    out = _dnsperf(client, datafile, seconds, server=server)
    found = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not found:
        raise RuntimeError(f"no qps in dnsperf output: {out[-500:]}")
    return {"qps": float(found.group(1)), "lost": int(lost.group(1)) if lost else -1}


def latency(
    client: str, datafile: str, seconds: int, server: str = SERVER, rate: int = RATE
) -> dict[str, float]:
    """dnsperf from netns ``client`` at a fixed ``rate``: latency percentiles (ms) and queries lost."""
    out = _dnsperf(client, datafile, seconds, "-Q", str(rate), "-v", server=server)
    values = sorted(float(m) for m in re.findall(r"^> \w+ \S+ \S+ ([\d.]+)$", out, re.M))
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not values:
        raise RuntimeError(f"no latencies in dnsperf output: {out[-500:]}")

    def pick(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 3)

    return {
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "p999_ms": pick(0.999),
        "n": len(values),
        "lost": int(lost.group(1)) if lost else -1,
    }


# --- the benchmark ----------------------------------------------------------------------------------


def measure(opts: Options) -> dict[str, Any]:
    """The raw numbers (also printed by ``python -m tests.bench.dns_proxy``)."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root (network namespaces, nft tproxy)")
    seconds, lat_seconds = (3, 2) if opts.quick else (8, 5)
    prefix = f"l7gb-{secrets.token_hex(3)}"
    made: list[str] = []
    dnsmasq: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[str]] = []
    result: dict[str, Any] = {"seconds": seconds, "latency_seconds": lat_seconds, "rate_qps": RATE}
    try:
        names = _build(prefix, made)
        client, router = names["client"], names["router"]
        dnsmasq = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                names["server"],
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--port",
                "53",
                f"--listen-address={SERVER}",
                "--bind-interfaces",
                "--pid-file=",
                "--address=/example.test/10.216.9.9",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(names["server"], f"{SERVER}:53")
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as data:
            data.write("".join(f"www{i}.example.test A\n" for i in range(100)))
            data.flush()
            result["direct_before"] = max_qps(client, data.name, seconds)
            result["direct_latency"] = latency(client, data.name, lat_seconds)
            _tproxy(router, True)
            for count in opts.dns_workers:
                procs = _start_workers(router, count)
                try:
                    result[f"proxy_{count}"] = {
                        "max": max_qps(client, data.name, seconds),
                        "latency": latency(client, data.name, lat_seconds),
                    }
                finally:
                    for proc in procs:
                        stop(proc)
                    procs = []
            _tproxy(router, False)
            result["direct_after"] = max_qps(client, data.name, seconds)
        return result
    finally:
        for proc in procs:
            stop(proc)
        stop(dnsmasq)
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)


def run(opts: Options) -> list[Figure]:
    raw = measure(opts)
    direct_qps = (raw["direct_before"]["qps"] + raw["direct_after"]["qps"]) / 2
    direct_p99 = raw["direct_latency"]["p99_ms"]
    figures = []
    for count in opts.dns_workers:
        workers = f"{count} worker{'s' if count > 1 else ''}"
        got = raw[f"proxy_{count}"]
        qps, lost = got["max"]["qps"], got["max"]["lost"]
        figures.append(
            Figure(
                name=f"DNS max throughput through the proxy ({workers})",
                value=round(qps),
                unit="qps",
                baseline=round(direct_qps),
                baseline_name="dnsmasq direct",
                target=f">= {MIN_RATIO} x direct, 0 lost",
                met=qps >= MIN_RATIO * direct_qps and lost == 0,
                details={
                    "proxy": got["max"],
                    "direct_before": raw["direct_before"],
                    "direct_after": raw["direct_after"],
                    "seconds": raw["seconds"],
                },
            )
        )
        lat = got["latency"]
        added = lat["p99_ms"] - direct_p99
        figures.append(
            Figure(
                name=f"DNS p99 latency at {RATE:,} qps through the proxy ({workers})",
                value=lat["p99_ms"],
                unit="ms",
                baseline=direct_p99,
                baseline_name="dnsmasq direct p99",
                target=f"<= direct + {MAX_ADDED_P99_MS:g} ms",
                met=added <= MAX_ADDED_P99_MS and lat["lost"] == 0,
                details={
                    "proxy": lat,
                    "direct": raw["direct_latency"],
                    "added_p99_ms": round(added, 3),
                    "added_p50_ms": round(lat["p50_ms"] - raw["direct_latency"]["p50_ms"], 3),
                },
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=PORT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.port)
        return
    opts = Options(quick=args.quick, dns_workers=tuple(int(w) for w in args.workers.split(",")))
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(measure(opts), indent=2))


if __name__ == "__main__":
    main()
