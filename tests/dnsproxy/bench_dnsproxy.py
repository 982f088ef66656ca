"""Benchmark: dnsperf against dnsmasq directly and through the proxy (N SO_REUSEPORT workers), in the
same three-namespace lab as the transparent tests. Needs root.

    .venv/bin/python tests/dnsproxy/bench_dnsproxy.py [--workers 2] [--seconds 10]

Prints JSON: max throughput (qps) direct and through the proxy, and at 5,000 qps the latency
percentiles (from dnsperf -v) direct and through the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2]))

from dnsproxy_harness import sh
from test_dnsproxy_transparent import PORT, SERVER4, lab


def worker() -> None:
    from dnsproxy import DNSProxy, Listeners, allow_names
    from l7.policy import fqdn

    async def main() -> None:
        def on_answer(source: str, qname: str, ips: tuple[tuple[str, int], ...]) -> None:
            return None

        decide = allow_names([fqdn.match_pattern("*.example.test")])
        proxy = DNSProxy(Listeners.create(PORT), decide, on_answer)
        async with proxy:
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


def dnsperf(client: str, datafile: str, seconds: int, *extra: str) -> str:
    return sh("ip", "netns", "exec", client, "dnsperf", "-s", SERVER4, "-d", datafile, "-l", str(seconds),
              "-c", "4", *extra).stdout


def qps(output: str) -> float:
    match = re.search(r"Queries per second:\s+([\d.]+)", output)
    assert match, output
    return float(match.group(1))


def latencies(output: str) -> dict[str, float]:
    values = sorted(float(m) for m in re.findall(r"^> \w+ \S+ \S+ ([\d.]+)$", output, re.M))
    lost = re.search(r"Queries lost:\s+(\d+)", output)
    pick = lambda p: values[min(len(values) - 1, int(p * len(values)))] * 1000  # noqa: E731
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "p999_ms": pick(0.999), "n": len(values),
            "lost": int(lost.group(1)) if lost else -1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    with lab() as names, tempfile.NamedTemporaryFile("w", suffix=".txt") as data:
        data.write("".join(f"www{i}.example.test A\n" for i in range(100)))
        data.flush()
        ruleset = sh("ip", "netns", "exec", names.router, "nft", "list", "table", "inet", "l7gd").stdout
        sh("ip", "netns", "exec", names.router, "nft", "flush", "chain", "inet", "l7gd", "pre")
        result: dict[str, object] = {"workers": args.workers}
        result["direct_qps"] = qps(dnsperf(names.client, data.name, args.seconds))
        result["direct_5k"] = latencies(dnsperf(names.client, data.name, 5, "-Q", "5000", "-v"))
        sh("ip", "netns", "exec", names.router, "nft", "delete", "table", "inet", "l7gd")
        sh("ip", "netns", "exec", names.router, "nft", "-f", "-", stdin=ruleset)
        procs = [
            subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{names.router}", sys.executable, __file__, "--worker"],
                stdout=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
            )
            for _ in range(args.workers)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
            result["proxy_qps"] = qps(dnsperf(names.client, data.name, args.seconds))
            result["proxy_5k"] = latencies(dnsperf(names.client, data.name, 5, "-Q", "5000", "-v"))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(5)
        result["ratio"] = round(float(result["proxy_qps"]) / float(result["direct_qps"]), 3)  # type: ignore[arg-type]
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
