"""Datapath: TCP throughput pod → pod through the tc programs vs the same topology without them, and the
programs' per-run cost from the kernel's BPF run-time statistics.

Topology (namespaces ``l7gb-<random>-{node,a,b}``, addresses 10.216.1.0/24 and 10.216.2.0/24 only
inside them): pod a ── veth ── node ── veth ── pod b, the node routes. The datapath is loaded for the
node (pins under /sys/fs/bpf/l7gate/l7gb-<random>-node), both host-side veths get the endpoint hooks,
a is egress-enforced and b ingress-enforced with an allow rule for iperf3's port (so every packet
goes through the policy and conntrack lookups). One iperf3 TCP stream a → b.

Rounds alternate "without programs" (filters detached) and "with programs"; the figure is the median
of the rounds, the ratio is with / without. Throughput runs have BPF stats off (they add two clock
reads per run); one extra run with ``kernel.bpf_stats_enabled=1`` gives run_time_ns / run_cnt per
program (the sysctl's previous value is restored afterwards). Note: with GSO/GRO on veth a "run" is
one skb, often far larger than one MTU-sized packet.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.bench.common import Figure, Options, sh, stop
from tests.datapath.netlab import in_netns

NAME = "datapath"
IPERF_PORT = 5201
IDENTITY = {"a": 1001, "b": 1002}
SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def _build(prefix: str, made: list[str]) -> dict[str, Any]:
    node = f"{prefix}-node"
    pods: dict[str, dict[str, Any]] = {}
    sh("ip", "netns", "add", node)
    made.append(node)
    sh("ip", "-n", node, "link", "set", "lo", "up")
    sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for i, pn in enumerate(("a", "b"), start=1):
        ns, host_if = f"{prefix}-{pn}", f"lxc{pn}"
        ip4, node_ip4 = f"10.216.{i}.2", f"10.216.{i}.1"
        sh("ip", "netns", "add", ns)
        made.append(ns)
        sh("ip", "-n", node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", node, "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", "eth0")
        sh("ip", "-n", node, "addr", "add", f"{node_ip4}/24", "dev", host_if)
        sh("ip", "-n", ns, "route", "add", "default", "via", node_ip4)
        with in_netns(node):
            ifindex = socket.if_nametoindex(host_if)
        pods[pn] = {"ns": ns, "index": i, "ip4": ip4, "node_ip4": node_ip4, "ifindex": ifindex}
    return {"node": node, "pods": pods}


def _connect_blocked(ns: str, ip: str, port: int) -> bool:
    """True when a TCP connect times out (dropped) rather than being refused or accepted."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect((ip, port))
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


def _iperf(client_ns: str, server_ip: str, seconds: int) -> dict[str, float]:
    out = sh(
        "ip",
        "netns",
        "exec",
        client_ns,
        "iperf3",
        "-c",
        server_ip,
        "-p",
        str(IPERF_PORT),
        "-t",
        str(seconds),
        "-J",
        "--connect-timeout",
        "3000",
        timeout=seconds + 20,
    )
    end = json.loads(out)["end"]
    return {
        "gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
        "bytes": end["sum_received"]["bytes"],
        "retransmits": end["sum_sent"].get("retransmits", 0),
    }


def _prog_id(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    raise RuntimeError(f"no prog_id for fd {fd}")


def _prog_stats(prog_id: int) -> tuple[int, int]:
    info = json.loads(sh("bpftool", "prog", "show", "id", str(prog_id), "--json"))
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def run(opts: Options) -> list[Figure]:
    from bpf.datapath import BPFFS, PIN_ROOT, Datapath
    from bpf.loader import PROG_FROM_LXC, PROG_TO_LXC, unpin
    from bpf.maps import Action, Direction
    from bpf.policy_entries import PolicyDecision

    if os.geteuid() != 0:
        raise RuntimeError("needs root (network namespaces, tc, BPF)")
    seconds, rounds = (2, 1) if opts.quick else (3, 5)
    prefix = f"l7gb-{secrets.token_hex(3)}"
    made: list[str] = []
    dp: Datapath | None = None
    server: subprocess.Popen[bytes] | None = None
    stats_before = SYSCTL.read_text().strip()
    try:
        if not os.path.ismount(BPFFS):
            sh("mount", "-t", "bpf", "bpf", str(BPFFS))
        topo = _build(prefix, made)
        node, a, b = topo["node"], topo["pods"]["a"], topo["pods"]["b"]
        dp = Datapath.open(node, netns=f"/run/netns/{node}", ct_max=16384)
        for name, pod in topo["pods"].items():
            dp.set_ipcache(f"{pod['ip4']}/32", IDENTITY[name], pod["index"])
            dp.set_ipcache(f"{pod['node_ip4']}/32", 1)
        dp.set_endpoint(a["ifindex"], a["index"], IDENTITY["a"], egress_enforced=True)
        dp.set_endpoint(b["ifindex"], b["index"], IDENTITY["b"], ingress_enforced=True)
        dp.sync_policy(
            a["index"],
            [PolicyDecision(Direction.EGRESS, IDENTITY["b"], 6, IPERF_PORT, IPERF_PORT, Action.ALLOW)],
        )
        dp.sync_policy(
            b["index"],
            [PolicyDecision(Direction.INGRESS, IDENTITY["a"], 6, IPERF_PORT, IPERF_PORT, Action.ALLOW)],
        )
        server = subprocess.Popen(
            ["ip", "netns", "exec", b["ns"], "iperf3", "-s", "-p", str(IPERF_PORT), "-B", b["ip4"]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while f"{b['ip4']}:{IPERF_PORT}" not in sh("ip", "netns", "exec", b["ns"], "ss", "-Hltn"):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("iperf3 server did not start")
            time.sleep(0.1)

        def attach() -> None:
            assert dp is not None
            dp.attach_endpoint(a["ifindex"])
            dp.attach_endpoint(b["ifindex"])
            dp.ct_flush()

        def detach() -> None:
            assert dp is not None
            dp.detach(a["ifindex"])
            dp.detach(b["ifindex"])

        # The programs enforce: a port without an allow rule is dropped (timeout, not refused).
        attach()
        enforcing = _connect_blocked(a["ns"], b["ip4"], IPERF_PORT + 1)
        detach()
        without_runs, with_runs = [], []
        for _ in range(rounds):
            without_runs.append(_iperf(a["ns"], b["ip4"], seconds))
            attach()
            with_runs.append(_iperf(a["ns"], b["ip4"], seconds))
            detach()

        # Per-run cost: one more run with the programs attached and BPF stats on.
        attach()
        ids = {name: _prog_id(dp._progs.fds[name]) for name in (PROG_FROM_LXC, PROG_TO_LXC)}
        SYSCTL.write_text("1")
        start = {name: _prog_stats(pid) for name, pid in ids.items()}
        stats_run = _iperf(a["ns"], b["ip4"], seconds)
        end = {name: _prog_stats(pid) for name, pid in ids.items()}
        SYSCTL.write_text(stats_before)
        detach()

        gbit_without = statistics.median(r["gbit_s"] for r in without_runs)
        gbit_with = statistics.median(r["gbit_s"] for r in with_runs)
        figures = [
            Figure(
                name="TCP throughput pod → pod, programs + allow policy",
                value=round(gbit_with, 3),
                unit="Gbit/s",
                baseline=round(gbit_without, 3),
                baseline_name="same topology, no programs",
                details={
                    "paired_ratio_median": round(
                        statistics.median(
                            w["gbit_s"] / o["gbit_s"] for w, o in zip(with_runs, without_runs, strict=True)
                        ),
                        3,
                    ),
                    "with_runs": with_runs,
                    "without_runs": without_runs,
                    "seconds_per_run": seconds,
                    "policy_enforced": enforcing,
                },
            )
        ]
        for name in ids:
            ns = end[name][0] - start[name][0]
            cnt = end[name][1] - start[name][1]
            if cnt <= 0:
                raise RuntimeError(f"{name} did not run (BPF stats: {start[name]} → {end[name]})")
            figures.append(
                Figure(
                    name=f"{name} cost per run (skb)",
                    value=round(ns / cnt, 1),
                    unit="ns",
                    details={
                        "run_cnt": cnt,
                        "run_time_ns": ns,
                        "runs_per_s": round(cnt / seconds),
                        "bytes_per_run": round(stats_run["bytes"] / cnt),
                        "cpu_share_of_one_core": round(ns / (seconds * 1e9), 4),
                        "stats_run_gbit_s": round(stats_run["gbit_s"], 3),
                    },
                )
            )
        if not enforcing:
            raise RuntimeError(f"the programs did not drop an unallowed port; figures: {figures}")
        return figures
    finally:
        with contextlib.suppress(OSError):
            SYSCTL.write_text(stats_before)
        stop(server)
        if dp is not None:
            with contextlib.suppress(Exception):
                dp.destroy()
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)
        with contextlib.suppress(Exception):
            unpin(PIN_ROOT / f"{prefix}-node")
