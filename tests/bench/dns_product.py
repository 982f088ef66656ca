"""DNS through the product, beside dnsdist in the same position and kube-dns answered directly, in one run.

Lab (unique name ``dpb<pid>``): one node, kube-dns (dnsmasq) answering ``www<i>.example.test`` with the
i-th address of 192.168.96.0/21, three pods:

- ``client`` (app=client) under a CiliumNetworkPolicy with a DNS rule (``matchPattern: "*"`` to kube-dns)
  and ``toFQDNs: *.example.test``: its queries to kube-dns are redirected by the datapath to the node
  agent's DNS proxy, which forwards them to kube-dns and writes the answers' IPs to the ipcache (through
  the agent's FQDN cache and engine) before releasing each answer — the **product** path;
- ``peer`` (no policy): queries **dnsdist** running in the node namespace (the router between the pods
  and kube-dns, where the agent's proxy runs), which forwards to the same kube-dns — the **peer** leg;
  and queries kube-dns itself — the **direct** leg.

dnsperf (4 clients, 100 names) in the pods: max throughput for S seconds per leg, then latency at a
fixed 5,000 qps; then the product path at twice its measured capacity (overload: what the excess gets,
how the served queries fare) and a last run at 5,000 qps right after it (recovery).

    .venv/bin/python -m tests.bench.dns_product [--quick] [--profile out.txt] [--overload-seconds 60]

``--profile FILE``: py-spy samples the node agent during an extra max-throughput run of the product leg
and the top functions (own time and total time) are written to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.bench.common import Figure, Options, sh
from tests.bench.dns_proxy import RATE, dnsperf_argv, latency, max_qps

NAME = "dns_product"
NAMES = 100
ADDRESSES = ipaddress.ip_network("192.168.96.0/21")
MIN_RATIO = 0.5  # product max qps / dnsdist max qps
MAX_ADDED_P99_MS = 0.5
REPO = Path(__file__).resolve().parents[2]
PY_SPY = REPO / ".venv" / "bin" / "py-spy"


def topology() -> dict[str, Any]:
    hosts = list(ADDRESSES.hosts())
    return {
        "description": "l7gate bench: DNS through the product, dnsdist and direct",
        "nodes": [{"name": "n1"}],
        "pods": [
            {"name": "client", "labels": {"app": "client"}, "ipv6": False},
            {"name": "peer", "labels": {"app": "peer"}, "ipv6": False},
        ],
        "dns": {
            "ttl": 300,
            "records": [
                {"name": f"www{i}.example.test", "a": [str(hosts[i])], "ttl": 300} for i in range(NAMES)
            ],
        },
    }


def policy() -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "dns-bench", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "client"}},
            "egress": [
                {
                    "toEndpoints": [
                        {
                            "matchLabels": {
                                "k8s:io.kubernetes.pod.namespace": "kube-system",
                                "k8s:k8s-app": "kube-dns",
                            }
                        }
                    ],
                    "toPorts": [
                        {
                            "ports": [{"port": "53", "protocol": "ANY"}],
                            "rules": {"dns": [{"matchPattern": "*"}]},
                        }
                    ],
                },
                {
                    "toFQDNs": [{"matchPattern": "*.example.test"}],
                    "toPorts": [{"ports": [{"port": "8443"}]}],
                },
            ],
        },
    }


DNSDIST_CONF = """
setLocal("{listen}:53")
setACL({{"0.0.0.0/0"}})
newServer({{address="{upstream}:53"}})
"""


def _dnsdist(netns: str, listen: str, upstream: str, conf: Path, log: Path) -> Any:
    from l7 import procs

    conf.write_text(DNSDIST_CONF.format(listen=listen, upstream=upstream))
    proc = procs.spawn(
        ["ip", "netns", "exec", netns, "dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)],
        stdout=log,
    )
    deadline = time.monotonic() + 15
    while f"{listen}:53" not in sh("ip", "netns", "exec", netns, "ss", "-Hlun"):
        if time.monotonic() > deadline or not proc.alive():
            proc.stop()
            raise RuntimeError(f"dnsdist did not start: {log.read_text()[-500:]}")
        time.sleep(0.1)
    return proc


def _wait_allowed(lab: Any, name: str, server: str, timeout: float = 30) -> None:
    """Until a query from the client pod gets NOERROR through the proxy (policy applied, proxy open)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = lab.exec("client", ["dig", "+time=1", "+tries=1", f"@{server}", name], timeout=10)
        last = out.stdout
        if "status: NOERROR" in last and "ANSWER: 1" in last:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the client's DNS never went through the proxy: {last[-300:]}")


def _agent_pid(lab: Any) -> int:
    for rec in lab.state.processes:
        if rec.name == "agent:n1":
            return int(rec.pid)
    raise RuntimeError("no agent process recorded")


def _dns_status(lab: Any) -> dict[str, Any]:
    from l7.lab import agents as agent_lab

    data: dict[str, Any] = json.loads(agent_lab.status_file(lab.state, "n1").read_text())
    return dict(data.get("services", {}).get("dns", {}))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _max_with_cpu(pid: int, netns: str, datafile: str, seconds: int, server: str) -> dict[str, Any]:
    """``max_qps`` and the CPU time process ``pid`` spent per query meanwhile (µs): a measure of the
    proxy's cost that holds on a loaded machine, where the qps figure depends on what else runs."""
    before = _cpu_seconds(pid)
    got: dict[str, Any] = dict(max_qps(netns, datafile, seconds, server=server))
    spent = _cpu_seconds(pid) - before
    got["cpu_us_per_query"] = round(1e6 * spent / max(1.0, got["qps"] * seconds), 1)
    return got


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _profile(pid: int, netns: str, datafile: str, *, server: str, seconds: int, out: Path) -> dict[str, Any]:
    """py-spy on the agent during a max-throughput run; the top functions written to ``out``."""
    raw = out.with_suffix(".raw.txt")
    spy = subprocess.Popen(
        [
            str(PY_SPY),
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds + 1),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--nonblocking",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        got = max_qps(netns, datafile, seconds, server=server)
    finally:
        spy.wait(seconds + 30)
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        if "dns-proxy" not in frames[0]:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    proxy = sum(
        c
        for line in raw.read_text().splitlines()
        if "dns-proxy" in line
        for c in [int(line.rpartition(" ")[2])]
    )
    lines = [f"# py-spy, {samples} samples in all threads, {proxy} in the dns-proxy thread; qps {got}"]
    lines.append("## own time (dns-proxy thread)")
    lines += [
        f"{100 * c / max(1, proxy):5.1f}%  {f}" for f, c in sorted(own.items(), key=lambda x: -x[1])[:40]
    ]
    lines.append("## total time (dns-proxy thread)")
    lines += [
        f"{100 * c / max(1, proxy):5.1f}%  {f}" for f, c in sorted(total.items(), key=lambda x: -x[1])[:60]
    ]
    by_thread: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack:
            thread = stack.split(";")[0]
            by_thread[thread] = by_thread.get(thread, 0) + int(count_text)
    lines.append("## samples by thread")
    lines += [f"{c:8d}  {t}" for t, c in sorted(by_thread.items(), key=lambda x: -x[1])[:20]]
    out.write_text("\n".join(lines) + "\n")
    return {"qps": got, "file": str(out)}


def _udp_drops(netns: str) -> dict[str, int]:
    """The UDP error counters of a namespace (``/proc/net/snmp``): where datagrams were dropped."""
    lines = [line.split() for line in sh("ip", "netns", "exec", netns, "cat", "/proc/net/snmp").splitlines()]
    udp = [line[1:] for line in lines if line and line[0] == "Udp:"]
    counters = dict(zip(udp[0], (int(v) for v in udp[1]), strict=True)) if len(udp) == 2 else {}
    return {k: counters.get(k, 0) for k in ("InErrors", "RcvbufErrors", "SndbufErrors", "NoPorts")}


def _softnet_drops() -> int:
    """Packets the kernel dropped because a CPU's input backlog was full (``netdev_max_backlog``)."""
    return sum(int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines())


def _drops(namespaces: dict[str, str]) -> dict[str, Any]:
    return {"softnet": _softnet_drops(), **{role: _udp_drops(ns) for role, ns in namespaces.items()}}


def _drops_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"softnet": after["softnet"] - before["softnet"]}
    for role, counters in after.items():
        if role != "softnet":
            changed = {k: v - before[role][k] for k, v in counters.items() if v != before[role][k]}
            if changed:
                out[role] = changed
    return out


def _overload(
    lab: Any, netns: str, datafile: str, *, server: str, rate: int, seconds: int, watch: dict[str, str]
) -> dict[str, Any]:
    """The product path at ``rate`` qps for ``seconds``: rcodes the client got, latency, agent memory,
    and where datagrams were dropped (UDP counters of the ``watch`` namespaces, softnet backlog)."""
    pid = _agent_pid(lab)
    before = _dns_status(lab)
    drops = _drops(watch)
    rss = [_rss_kb(pid)]
    with tempfile.TemporaryFile("w+") as output:  # dnsperf prints a line per lost query: not a pipe
        proc = subprocess.Popen(
            dnsperf_argv(netns, datafile, seconds, "-Q", str(rate), "-q", "1000", server=server),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            while proc.poll() is None:
                time.sleep(1.0)  # sampling the agent's memory once a second is the measurement
                with contextlib.suppress(OSError):
                    rss.append(_rss_kb(pid))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output.seek(0)
        out = output.read()
    after = _dns_status(lab)
    dropped = _drops_between(drops, _drops(watch))
    listed = re.search(r"Response codes:(.*(?:\n\s+\w+ \d+ \([\d.]+%\))*)", out)
    codes = dict(re.findall(r"(\w+) (\d+) \([\d.]+%\)", listed.group(1))) if listed else {}
    sent = re.search(r"Queries sent:\s+(\d+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)", out)
    return {
        "rate_qps": rate,
        "seconds": seconds,
        "sent": int(sent.group(1)) if sent else -1,
        "completed": int(done.group(1)) if done else -1,
        "lost": int(lost.group(1)) if lost else -1,
        "rcodes": {k: int(v) for k, v in codes.items()},
        "avg_latency_ms": round(float(avg.group(1)) * 1000, 3) if avg else None,
        "max_latency_ms": round(float(avg.group(2)) * 1000, 3) if avg else None,
        "agent_rss_kb": {"before": rss[0], "max": max(rss), "after": rss[-1]},
        "overload_refused": after.get("overload_refused", 0) - before.get("overload_refused", 0),
        "dropped": dropped,
    }


def _say(text: str) -> None:
    print(f"[dns_product] {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def measure(
    opts: Options, profile: Path | None = None, overload_seconds: int | None = None
) -> dict[str, Any]:
    from l7.lab import Lab, down
    from l7.lab import agents as agent_lab
    from l7.lab.topology import parse_topology

    if os.geteuid() != 0:
        raise RuntimeError("needs root (lab)")
    seconds, lat_seconds = (3, 3) if opts.quick else (8, 6)
    overload_seconds = overload_seconds or (5 if opts.quick else 60)
    name = f"dpb{os.getpid() % 100000}"
    dnsdist = None
    result: dict[str, Any] = {"seconds": seconds, "latency_seconds": lat_seconds, "rate_qps": RATE}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            lab = Lab.up(parse_topology(topology(), "<bench dns_product>"), name)
            dns_ip = lab.plan.pod(lab.topology.dns_pod().key).ips[0]
            node = lab.plan.node("n1")
            client, peer = lab.pod("client").netns, lab.pod("peer").netns
            policies = tmp / "policies"
            policies.mkdir()
            (policies / "dns.yaml").write_text(yaml.safe_dump(policy()))
            agent_lab.apply(name, policies)
            _wait_allowed(lab, "www0.example.test", dns_ip)
            dnsdist = _dnsdist(node.netns, node.router_v4, dns_ip, tmp / "dnsdist.conf", tmp / "dnsdist.log")
            datafile = tmp / "names.txt"
            datafile.write_text("".join(f"www{i}.example.test A\n" for i in range(NAMES)))
            data = str(datafile)
            # warm: every name once through the product (first answers write the ipcache)
            max_qps(client, data, 1, server=dns_ip)
            legs = {"direct": (peer, dns_ip), "dnsdist": (peer, node.router_v4), "product": (client, dns_ip)}
            pids = {"dnsdist": dnsdist.pid, "product": _agent_pid(lab)}
            for leg, (netns, server) in legs.items():
                _say(f"{leg}: max throughput")
                if leg in pids:
                    result[leg] = {"max": _max_with_cpu(pids[leg], netns, data, seconds, server)}
                else:
                    result[leg] = {"max": max_qps(netns, data, seconds, server=server)}
            for leg, (netns, server) in legs.items():
                _say(f"{leg}: latency at {RATE} qps")
                result[leg]["latency"] = latency(netns, data, lat_seconds, server=server)
            result["direct"]["max_after"] = max_qps(peer, data, seconds, server=dns_ip)
            result["dns_status"] = _dns_status(lab)
            _say("overload")
            capacity = int(result["product"]["max"]["qps"])
            watch = {
                "client": client,
                "node": node.netns,
                "kube-dns": lab.plan.pod(lab.topology.dns_pod().key).netns,
            }
            result["overload"] = _overload(
                lab, client, data, server=dns_ip, rate=2 * capacity, seconds=overload_seconds, watch=watch
            )
            result["recovery"] = latency(client, data, lat_seconds, server=dns_ip)
            if profile is not None:
                _say("profile")
                result["profile"] = _profile(
                    _agent_pid(lab), client, data, server=dns_ip, seconds=seconds, out=profile
                )
            return result
        finally:
            if dnsdist is not None:
                dnsdist.stop()
            down(name)


def compare(var: str, values: list[str], rounds: int, seconds: int = 3) -> dict[str, Any]:
    """The product path with the agent's ``var`` at each of ``values`` in turn, ``rounds`` times, in
    one lab (the agent restarted gracefully between settings): same machine load for all, max qps and
    p99 at 5,000 qps per setting and round."""
    from l7.lab import Lab, down
    from l7.lab import agents as agent_lab
    from l7.lab.state import load_state
    from l7.lab.topology import parse_topology

    name = f"dpa{os.getpid() % 100000}"
    result: dict[str, Any] = {value: [] for value in values}
    saved = os.environ.get(var)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            os.environ[var] = values[0]
            lab = Lab.up(parse_topology(topology(), "<bench dns_product ab>"), name)
            dns_ip = lab.plan.pod(lab.topology.dns_pod().key).ips[0]
            client = lab.pod("client").netns
            (tmp / "policies").mkdir()
            (tmp / "policies" / "dns.yaml").write_text(yaml.safe_dump(policy()))
            agent_lab.apply(name, tmp / "policies")
            _wait_allowed(lab, "www0.example.test", dns_ip)
            data = str(tmp / "names.txt")
            Path(data).write_text("".join(f"www{i}.example.test A\n" for i in range(NAMES)))
            current = values[0]
            for _ in range(rounds):
                for value in values:
                    if value != current:
                        os.environ[var] = value
                        agent_lab.restart_agent(name, "n1", graceful=True)
                        current = value
                    _wait_allowed(lab, "www0.example.test", dns_ip)
                    max_qps(client, data, 1, server=dns_ip)  # warm
                    _say(f"{var}={value}")
                    pid = agent_lab.agent_records(load_state(name))["n1"].pid
                    result[value].append(
                        {
                            "max": _max_with_cpu(pid, client, data, seconds, dns_ip),
                            "latency": latency(client, data, seconds, server=dns_ip),
                        }
                    )
            return result
        finally:
            if saved is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = saved
            down(name)


def run(opts: Options) -> list[Figure]:
    raw = measure(opts)
    direct_qps = (raw["direct"]["max"]["qps"] + raw["direct"]["max_after"]["qps"]) / 2
    peer_qps = raw["dnsdist"]["max"]["qps"]
    product = raw["product"]
    direct_p99 = raw["direct"]["latency"]["p99_ms"]
    lat = product["latency"]
    over = raw["overload"]
    served = over["rcodes"].get("NOERROR", 0)
    return [
        Figure(
            name="DNS max throughput through the product (pod under a DNS rule → agent proxy → kube-dns)",
            value=round(product["max"]["qps"]),
            unit="qps",
            baseline=round(peer_qps),
            baseline_name="dnsdist in the node",
            target=f">= {MIN_RATIO} x dnsdist, 0 lost",
            met=product["max"]["qps"] >= MIN_RATIO * peer_qps and product["max"]["lost"] == 0,
            details={
                "product": product["max"],
                "dnsdist": raw["dnsdist"]["max"],
                "direct": raw["direct"]["max"],
                "direct_after": raw["direct"]["max_after"],
                "dnsdist_vs_direct": round(peer_qps / direct_qps, 3) if direct_qps else None,
                "product_vs_direct": round(product["max"]["qps"] / direct_qps, 3) if direct_qps else None,
                "seconds": raw["seconds"],
                "dns_status": raw["dns_status"],
            },
        ),
        Figure(
            name=f"DNS p99 latency at {RATE:,} qps through the product",
            value=lat["p99_ms"],
            unit="ms",
            baseline=direct_p99,
            baseline_name="kube-dns direct p99",
            target=f"<= direct + {MAX_ADDED_P99_MS:g} ms, 0 lost",
            met=lat["p99_ms"] - direct_p99 <= MAX_ADDED_P99_MS and lat["lost"] == 0,
            details={
                "product": lat,
                "dnsdist": raw["dnsdist"]["latency"],
                "direct": raw["direct"]["latency"],
            },
        ),
        Figure(
            name=f"DNS overload: product at 2x capacity for {over['seconds']} s — queries lost",
            value=over["lost"],
            unit="queries",
            target="0 lost (the excess gets a fast REFUSED); agent memory bounded; p99 at 5,000 qps after",
            met=over["lost"] == 0 and raw["recovery"]["lost"] == 0,
            details={**over, "served_noerror": served, "recovery": raw["recovery"]},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--overload-seconds", type=int, default=None)
    parser.add_argument(
        "--ab",
        metavar="VAR=A,B",
        default=None,
        help="instead of the legs: the product path with the agent's environment variable VAR at A, then B, "
        "alternated (graceful agent restarts in one lab), rounds of max qps and latency at 5,000 qps",
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))  # cleanup runs
    if args.ab:
        var, _, values = args.ab.partition("=")
        print(json.dumps(compare(var, values.split(","), args.rounds), indent=2))
        return
    print(json.dumps(measure(Options(quick=args.quick), args.profile, args.overload_seconds), indent=2))


if __name__ == "__main__":
    main()
