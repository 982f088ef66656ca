"""Cluster scale through the public interface: a files-mode agent on the issue-12 workload.

::

    scale_workload ─► DIR/policies/*.yaml, DIR/endpoints.json
                        │
    ip netns add l7gsb-<hex>; one veth + /32 route per local endpoint (the agent finds each endpoint's
    interface from the route to its IP, as on a plain host)
                        │
    nsenter --net=/run/netns/l7gsb-<hex> l7gate agent --node node-00 --policies DIR/policies
                                                      --endpoints DIR/endpoints.json --state-dir DIR/state
                        │                              (no --services: the policy engine and the datapath)
                        ▼
    DIR/state/agent-node-00.json  ◄── polled every 2 ms: ready, generation, policies_hash, endpoints_hash

Measured (each against the issue's target):

- agent start → status ready with the expected input hashes (the bcc compile/load, from the agent's
  log line ``datapath … open (N s since start)``, is reported separately);
- one HTTP policy file changed (written beside, ``os.rename`` into place) → status shows the new
  ``policies_hash``: p50/p99 over N changes;
- one endpoint added on the local node (its veth and route exist first, as a CNI makes them) to the
  endpoints file → status shows the new ``endpoints_hash``: p50/p99;
- the agent's RSS (``VmRSS``, and its peak ``VmHWM``) at the end;
- restart: the agent stopped (SIGTERM) and started again on the same state → applied. The datapath
  it finds was built from the same source, so it adopts the pinned programs (no bcc compile); the
  log's ``datapath … open`` line gives that part.

Two passes: the policy engine alone (no services), then the same with the workload's learned FQDN IPs:
``--services dns`` and the DNS service's cache file (``<state-dir>/fqdn-cache-<node>.json``) written
before the start, so the agent resolves with every learned IP (the restored count is checked in its
status). The RSS difference per learned IP is reported (an upper bound: it includes the DNS service).
Processes the agent leaves in the namespace on purpose (the DNS socket keeper) are stopped by PID.

A change that is not applied within the per-change timeout counts as the timeout (a lower bound) and
fails its target; the run goes on. Everything is removed at the end: the agent (SIGTERM, then SIGKILL),
the network namespace, the pinned maps under /sys/fs/bpf/l7gate/l7gsb-<hex>, the temporary directory.

One change is in flight at a time, so "applied" is the first status whose ``policies_hash`` (or
``endpoints_hash``) differs from the one before the rename: the bench does not depend on how the agent
hashes its inputs. After the run, the final hashes are compared with ``l7.agent.watch.content_hash`` of
the files (reported, not required).

    .venv/bin/python -m tests.bench.scale_agent [--quick] [--learned] [--keep] [--profile-restart FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench import scale_workload as sw
from tests.bench.common import Figure, Options, sh, stop

NAME = "scale_agent"
REPO = Path(__file__).resolve().parents[2]
START_TARGET_S = 2.0
CHANGE_P99_TARGET_MS = 100.0
POD_ADD_P99_TARGET_MS = 50.0
RSS_TARGET_MB = 400.0
POLL = 0.002
FQDN_CACHE_FILE = "fqdn-cache-{node}.json"  # l7.agent.fqdn.state_path; checked through the status


@dataclass(frozen=True)
class Settings:
    params: sw.Params
    changes: int
    pod_adds: int
    start_timeout: float
    change_timeout: float
    learned: bool = False
    """Run with ``--services dns`` and the workload's learned IPs restored from the FQDN cache file."""


QUICK = Settings(sw.QUICK, changes=5, pod_adds=5, start_timeout=90.0, change_timeout=20.0)
FULL = Settings(sw.FULL, changes=5, pod_adds=5, start_timeout=240.0, change_timeout=60.0)
QUICK_LEARNED = dataclasses.replace(QUICK, changes=3, pod_adds=3, learned=True)
FULL_LEARNED = dataclasses.replace(FULL, changes=3, pod_adds=2, change_timeout=120.0, learned=True)


# ------------------------------------------------------------------------------------- netns
def veth_names(k: int) -> tuple[str, str]:
    return f"lxc{k:05d}", f"lxp{k:05d}"


def make_netns(name: str, endpoints: list[dict[str, Any]]) -> None:
    """The node's namespace: lo up, and for every local endpoint a veth pair with a /32 route to its IP
    through the host side (both ends stay in the node namespace: nothing is sent)."""
    sh("ip", "netns", "add", name)
    lines = ["link set lo up"]
    for k, ep in enumerate(endpoints):
        host, peer = veth_names(k)
        lines += [
            f"link add {host} type veth peer name {peer}",
            f"link set {peer} up",
            f"link set {host} up",
            f"route add {ep['ips'][0]}/32 dev {host}",
        ]
    sh("ip", "-n", name, "-batch", "-", stdin="\n".join(lines) + "\n", timeout=120)


def stop_netns_processes(name: str, timeout: float = 5.0) -> None:
    """Stop what is left in our own namespace (processes the agent started there), by PID."""
    pids = [int(p) for p in sh("ip", "netns", "pids", name, check=False).split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
            time.sleep(0.05)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2 :].startswith("Z")


def delete_netns(name: str) -> None:
    sh("ip", "netns", "delete", name, check=False)


def unpin(datapath: str) -> None:
    pin_dir = Path("/sys/fs/bpf/l7gate") / datapath
    if not pin_dir.exists():
        return
    try:
        from bpf.loader import unpin as loader_unpin

        loader_unpin(pin_dir)
    except ImportError:  # the loader is being reworked: pins are plain files on bpffs
        pass
    finally:
        if pin_dir.exists():
            shutil.rmtree(pin_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------- agent
def rss_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


@dataclass
class Run:
    settings: Settings
    root: Path
    netns: str
    node: str
    workload: sw.Workload
    paths: sw.Paths
    endpoints_data: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    profile: Path | None = None
    """Run the next start under ``py-spy record`` (raw collapsed stacks written here at ready)."""

    @property
    def status_file(self) -> Path:
        return self.root / "state" / f"agent-{self.node}.json"

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def start(self) -> None:
        self.log = self.root / "agent.log"
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            str(REPO / ".venv" / "bin" / "l7gate"),
            "agent",
            "--node",
            self.node,
            "--policies",
            str(self.paths.policies),
            "--endpoints",
            str(self.paths.endpoints),
            "--state-dir",
            str(self.root / "state"),
            "--datapath-name",
            self.netns,
            "--services",
            "dns" if self.settings.learned else "",
        ]
        if self.profile is not None:  # py-spy runs the agent as its child, inside the namespace
            spy = [str(REPO / ".venv" / "bin" / "py-spy"), "record", "-r", "250", "-f", "raw"]
            argv[2:2] = [*spy, "-o", str(self.profile), "--"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def hashes(self) -> tuple[str | None, str | None]:
        st = self.status()
        return st.get("policies_hash"), st.get("endpoints_hash")

    def wait(
        self, timeout: float, policies_not: str | None = None, endpoints_not: str | None = None
    ) -> float | None:
        """Seconds until the status is ready with applied input hashes other than ``policies_not`` /
        ``endpoints_not`` (the hashes before the one change in flight); ``None`` at the timeout."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            st = self.status()
            if (
                st.get("ready")
                and st.get("state") == "running"
                and (self.proc is None or st.get("pid") == self.agent_pid())
                and st.get("policies_hash") not in (None, policies_not)
                and st.get("endpoints_hash") not in (None, endpoints_not)
            ):
                return time.monotonic() - start
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_tail()
                last = tail.splitlines()[-1] if tail else ""
                raise RuntimeError(f"the agent exited ({self.proc.returncode}): {last}\n{tail}")
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL)

    def agent_pid(self) -> int | None:
        """The agent's PID: the process started, or its child when py-spy runs it."""
        if self.proc is None or self.profile is None:
            return None if self.proc is None else self.proc.pid
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            return int(children[0]) if children else None
        return None

    def stop_profile(self) -> None:
        """Stop py-spy (SIGINT: it writes the profile and ends the agent it runs)."""
        if self.proc is None or self.profile is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        self.profile = None

    def log_tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def datapath_open_seconds(self) -> float | None:
        if self.log is None or not self.log.exists():
            return None
        found = re.search(
            r"datapath \S+ open \(([0-9.]+)s since start\)", self.log.read_text(errors="replace")
        )
        return float(found.group(1)) if found else None

    def adopted(self) -> bool | None:
        """Whether the datapath open compiled (the loader logs why it compiles), None without a log."""
        if self.log is None or not self.log.exists():
            return None
        return "compiling (" not in self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.proc, timeout=10)
        stop_netns_processes(self.netns)  # the DNS service's socket keeper outlives the agent on purpose


def hashes_match(run: Run, paths: sw.Paths) -> bool | None:
    """Whether the agent's applied hashes are ``l7.agent.watch.content_hash`` of the files on disk."""
    try:
        from l7.agent.watch import content_hash
    except ImportError:
        return None
    return run.hashes() == (content_hash(paths.policies), content_hash(paths.endpoints))


def _ms(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "n": len(ordered),
    }


def restart(run: Run, settings: Settings, profile: Path | None = None) -> dict[str, Any]:
    """Stop the agent (SIGTERM) and start another on the same state: seconds until it applied (what
    the agent leaves running on purpose, the DNS socket keeper, stays for the next one). ``profile``:
    the new agent runs under py-spy until it applied (slower: for where the time goes, not how much)."""
    stop(run.proc, timeout=10)
    run.profile = profile
    started = time.monotonic()
    run.start()
    waited = run.wait(settings.start_timeout)
    st = run.status()
    run.stop_profile()
    return {
        "seconds": None if waited is None else round(time.monotonic() - started, 3),
        "timeout": settings.start_timeout,
        "datapath_open_s": run.datapath_open_seconds(),
        "agent_ready_seconds": st.get("ready_seconds"),
        "last_apply": st.get("last_apply"),
        "adopted": run.adopted(),
    }


def measure(settings: Settings, keep: bool = False, profile: Path | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("needs root (network namespace, BPF)")
    p = settings.params
    netns = f"l7gsb-{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix=f"{netns}-"))
    workload = sw.generate(p)
    paths = sw.write(workload, root)
    run = Run(settings, root, netns, p.local_node, workload, paths)
    run.endpoints_data = json.loads(paths.endpoints.read_text())
    local = workload.local_endpoints
    extra = [sw.new_endpoint(p, k) for k in range(settings.pod_adds)]
    out: dict[str, Any] = {
        "workload": {
            "endpoints": len(run.endpoints_data["endpoints"]),
            "local_endpoints": len(local),
            "namespaces": p.namespaces,
            "nodes": p.nodes,
            "policies": len(workload.documents),
            "learned_ips": sum(len(ips) for ips in workload.learned.values()) if settings.learned else 0,
        },
        "services": "dns" if settings.learned else "",
        "netns": netns,
    }
    try:
        make_netns(netns, local + extra)
        if settings.learned:  # the DNS service restores its FQDN cache from this file at start
            (root / "state").mkdir()
            cache = root / "state" / FQDN_CACHE_FILE.format(node=p.local_node)
            cache.write_text(json.dumps(sw.fqdn_cache_state(workload)))
        started = time.monotonic()
        run.start()
        assert run.proc is not None
        waited = run.wait(settings.start_timeout)
        st = run.status()
        out["start"] = {
            "seconds": None if waited is None else round(time.monotonic() - started, 3),
            "timeout": settings.start_timeout,
            "datapath_open_s": run.datapath_open_seconds(),
            "agent_ready_seconds": st.get("ready_seconds"),
            "last_apply": st.get("last_apply"),
            "missing": len(st.get("missing") or ()),
        }
        if waited is None:
            out["rss_mb"] = rss_mb(run.proc.pid)
            return out
        cached = ((st.get("services") or {}).get("dns") or {}).get("cached_ips", 0)
        if settings.learned and cached != out["workload"]["learned_ips"]:
            raise RuntimeError(
                f"the agent restored {cached} learned IPs, not {out['workload']['learned_ips']}"
            )
        out["rss_after_start_mb"] = rss_mb(run.proc.pid)

        changes: list[float] = []
        applies: list[float] = []
        timeouts = 0
        for k in range(settings.changes):
            doc = sw.changed_http_policy(workload, k)
            name = sw.policy_file_name(doc)
            text = sw.dump_policy(doc)
            before = run.hashes()[0]
            t0 = time.monotonic()
            sw.replace_file(paths.policies / name, text)
            took = run.wait(settings.change_timeout, policies_not=before)
            if took is None:
                timeouts += 1
                took = settings.change_timeout
                run.wait(settings.start_timeout, policies_not=before)  # let it settle before the next one
            else:
                took = time.monotonic() - t0
                applies.append(float((run.status().get("last_apply") or {}).get("seconds") or 0.0))
            changes.append(took)
        out["policy_change"] = {
            **_ms(changes),
            "timeouts": timeouts,
            "timeout_s": settings.change_timeout,
            "agent_apply_ms": _ms(applies) if applies else None,
        }

        adds: list[float] = []
        applies = []
        timeouts = 0
        for ep in extra:
            run.endpoints_data["endpoints"].append(ep)
            content = sw.dump_endpoints(run.endpoints_data)
            before = run.hashes()[1]
            t0 = time.monotonic()
            sw.replace_file(paths.endpoints, content)
            took = run.wait(settings.change_timeout, endpoints_not=before)
            if took is None:
                timeouts += 1
                took = settings.change_timeout
                run.wait(settings.start_timeout, endpoints_not=before)
            else:
                took = time.monotonic() - t0
                applies.append(float((run.status().get("last_apply") or {}).get("seconds") or 0.0))
            adds.append(took)
        st = run.status()
        out["pod_add"] = {
            **_ms(adds),
            "timeouts": timeouts,
            "timeout_s": settings.change_timeout,
            "agent_apply_ms": _ms(applies) if applies else None,
            "missing_after": len(st.get("missing") or ()),
        }
        out["rss_mb"] = rss_mb(run.proc.pid)
        out["generation"] = st.get("generation")
        out["hashes_match_files"] = hashes_match(run, paths)
        out["dns"] = (st.get("services") or {}).get("dns")
        out["restart"] = restart(run, settings)
        if profile is not None:
            out["restart_profiled"] = restart(run, settings, profile)
        return out
    finally:
        out["log_tail"] = run.log_tail(5)
        with contextlib.ExitStack() as cleanup:  # every step runs, even when an earlier one raised
            if keep:
                out["kept"] = str(root)
            else:
                cleanup.callback(shutil.rmtree, root, ignore_errors=True)
            cleanup.callback(unpin, netns)
            cleanup.callback(delete_netns, netns)
            cleanup.callback(run.stop)


def figures(raw: dict[str, Any]) -> list[Figure]:
    w = raw["workload"]
    scale = f"{w['endpoints']:,} endpoints, {w['policies']:,} policies, {w['local_endpoints']} local"
    if w["learned_ips"]:
        scale += f", {w['learned_ips']:,} learned FQDN IPs (dns service)"
    start = raw["start"]
    out = [
        Figure(
            name=f"agent start → applied ({scale})",
            value=start["seconds"] if start["seconds"] is not None else start["timeout"],
            unit="s",
            target=f"<= {START_TARGET_S:g} s",
            met=start["seconds"] is not None and start["seconds"] <= START_TARGET_S,
            details=start,
        )
    ]
    if start["datapath_open_s"] is not None:
        out.append(
            Figure(
                name="agent start: of which datapath open (bcc compile + load)",
                value=start["datapath_open_s"],
                unit="s",
            )
        )
    what = ", learned IPs" if w["learned_ips"] else ""
    again = raw.get("restart")
    if again is not None:
        out.append(
            Figure(
                name=f"agent restart (SIGTERM, same state) → applied{what}"
                f" (datapath open {again['datapath_open_s']} s, adopted: {again['adopted']})",
                value=again["seconds"] if again["seconds"] is not None else again["timeout"],
                unit="s",
                target=f"<= {START_TARGET_S:g} s",
                met=again["seconds"] is not None and again["seconds"] <= START_TARGET_S,
                details=again,
            )
        )
    for key, label, target in (
        ("policy_change", "one policy file renamed into place → applied", CHANGE_P99_TARGET_MS),
        ("pod_add", "one endpoint added to the endpoints file → applied", POD_ADD_P99_TARGET_MS),
    ):
        got = raw.get(key)
        if got is None:
            continue
        out.append(
            Figure(
                name=f"{label}{what}, p99 (n={got['n']}, p50 {got['p50_ms']:,.0f} ms)",
                value=got["p99_ms"],
                unit="ms",
                target=f"<= {target:g} ms",
                met=got["timeouts"] == 0 and got["p99_ms"] <= target,
                details={**got, "hashes_match_files": raw.get("hashes_match_files")},
            )
        )
    rss = raw["rss_mb"]
    out.append(
        Figure(
            name=f"agent RSS at the end (VmRSS{what})",
            value=rss.get("VmRSS", 0.0),
            unit="MB",
            target=f"<= {RSS_TARGET_MB:g} MB",
            met=rss.get("VmRSS", 0.0) <= RSS_TARGET_MB,
            details={
                **rss,
                "after_start": raw.get("rss_after_start_mb"),
                "workload": w,
                "dns": raw.get("dns"),
            },
        )
    )
    return out


def run(opts: Options) -> list[Figure]:
    """The policy engine alone (no services), then the same with the learned IPs (dns service)."""
    base = measure(QUICK if opts.quick else FULL)
    out = figures(base)
    try:
        learned = measure(QUICK_LEARNED if opts.quick else FULL_LEARNED)
    except Exception as exc:  # noqa: BLE001 - the first pass's figures stand; this one is reported failed
        error = f"{type(exc).__name__}: {exc}"
        out.append(
            Figure(
                name=f"with learned FQDN IPs (dns service): failed to run: {error.splitlines()[0][:150]}",
                value=0.0,
                unit="",
                met=False,
                details={"error": error[-2000:]},
            )
        )
        return out
    out += figures(learned)
    ips = learned["workload"]["learned_ips"]
    before, after = base["rss_mb"].get("VmRSS"), learned["rss_mb"].get("VmRSS")
    if ips and before and after:
        out.append(
            Figure(
                name="agent RSS growth per learned FQDN IP (with dns service − without)",
                value=round((after - before) * 1024 * 1024 / ips),
                unit="B",
                details={"without_mb": before, "with_mb": after, "learned_ips": ips},
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (log, state)")
    parser.add_argument("--learned", action="store_true", help="with the learned IPs (dns service)")
    parser.add_argument(
        "--profile-restart",
        type=Path,
        metavar="FILE",
        help="then restart once more under py-spy record until applied (raw collapsed stacks to FILE)",
    )
    args = parser.parse_args()
    settings = (
        (QUICK_LEARNED if args.learned else QUICK) if args.quick else FULL_LEARNED if args.learned else FULL
    )
    print(json.dumps(measure(settings, keep=args.keep, profile=args.profile_restart), indent=2))


if __name__ == "__main__":
    main()
