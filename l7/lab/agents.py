"""The node agents of a lab: their configuration, the policy set they watch, starting them, waiting for
them, ``lab apply``, restarts and teardown (the lab drives the agent; the agent knows nothing of labs).

Layout in the lab's state directory::

    policies -> policies.d/<n>-<hash>     the set the agents watch (a symlink, swapped atomically)
    agent/agent-<node>.json               each agent's status (pid, ready, applied hashes, errors)
    agent/identities-<node>.json          identity allocator state; agent/proxy-ports.json
    agent/envoy-<node>.pid                the node's Envoy (PID, start time); agent/envoy-<node>/ its logs
    logs/agent-<node>.log

Agents run in the node namespaces with ``setsid nsenter --net=/run/netns/<node-netns>`` (``ip netns exec``
would hide /sys/fs/bpf) and are recorded in the lab state's processes, so ``lab down`` stops them. Each
node's datapath is pinned under ``/sys/fs/bpf/l7gate/<node-netns>`` (unique per lab).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l7.agent import watch
from l7.agent.dns import stop_keeper
from l7.agent.envoy import stop_envoy
from l7.agent.fqdn import DnsSettings
from l7.agent.node import LAB_SERVICES, AgentConfig, AgentError
from l7.lab import procs
from l7.lab.errors import LabError, NotFoundError
from l7.lab.layout import datapath
from l7.lab.procs import lab_env
from l7.lab.state import LabState, load_state

AGENT_READY_TIMEOUT = 60.0
APPLY_TIMEOUT = 30.0
PIN_ROOT = Path("/sys/fs/bpf/l7gate")


def datapath_info(state: LabState) -> dict[str, Any]:
    return datapath(state)


def agent_dir(state: LabState) -> Path:
    return state.directory / "agent"


def policies_link(state: LabState) -> Path:
    return state.directory / "policies"


def status_file(state: LabState, node: str) -> Path:
    return watch.status_path(agent_dir(state), node)


def install_policies(state: LabState, source: Path | None) -> str:
    """Copy the policy files of ``source`` (file or directory; None: no policies) into a new set and
    make it the one the agents watch (atomic symlink swap). Returns the set's content hash."""
    base = state.directory / "policies.d"
    base.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Path, Path]] = []
    if source is not None:
        src = source.resolve()
        root = src if src.is_dir() else src.parent
        files = [(f, f.relative_to(root)) for f in watch.policy_files(src)]
    existing = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime_ns)
    numbers = [int(p.name.split("-")[0]) for p in existing if p.name.split("-")[0].isdigit()]
    number = 1 + max(numbers, default=0)
    staging = base / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for f, rel in files:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, staging / rel)
    digest = watch.content_hash(staging)
    target = base / f"{number}-{digest}"
    staging.rename(target)
    link = policies_link(state)
    tmp_link = state.directory / f".policies-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(Path("policies.d") / target.name)
    tmp_link.replace(link)
    # keep the current and the previous set (an agent may still be reading it)
    for old in existing[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return digest


def agent_argv(lab: str, node: str) -> list[str]:
    return [sys.executable, "-m", "l7.cli", "agent", "--lab", lab, "--node", node]


def start_agent(state: LabState, node: str, netns: str, env: dict[str, str]) -> procs.ProcRecord:
    """The node agent in the node netns via ``nsenter`` (``ip netns exec`` would hide /sys/fs/bpf)."""
    argv = ["nsenter", f"--net=/run/netns/{netns}", *agent_argv(state.name, node)]
    log = state.directory / "logs" / f"agent-{node}.log"
    return procs.launch(f"agent:{node}", netns, argv, log, env)


def agent_records(state: LabState) -> dict[str, procs.ProcRecord]:
    return {r.name.removeprefix("agent:"): r for r in state.processes if r.name.startswith("agent:")}


def start_agents(
    state: LabState,
    env: dict[str, str],
    timeout: float = AGENT_READY_TIMEOUT,
    progress: Callable[[str], None] = lambda _step: None,
) -> float:
    """Install the initial policy set (``state.policies``), start one agent per node and wait until
    each has applied it, telling ``progress`` each step. Returns the seconds from start to the last agent
    ready."""
    source = Path(state.policies) if state.policies else None
    if source is not None:
        from l7.policy.documents import PolicySourceError, load_paths

        try:
            result = load_paths([source])
        except PolicySourceError as exc:
            raise LabError(str(exc)) from None
        if result.errors:
            raise LabError("invalid policies:\n  " + "\n  ".join(str(e) for e in result.errors))
    digest = install_policies(state, source)
    progress(f"policy set {digest} installed")
    agent_dir(state).mkdir(parents=True, exist_ok=True)
    endpoints_hash = watch.content_hash(state.directory / "endpoints.json")
    expects: list[watch.Expect] = []
    records: dict[Path, procs.ProcRecord] = {}
    for node in datapath_info(state)["nodes"]:
        with contextlib.suppress(FileNotFoundError):
            status_file(state, node["name"]).unlink()
        rec = start_agent(state, node["name"], node["netns"], env)
        state.processes.append(rec)
        state.save()
        progress(f"agent of {node['name']} started (pid {rec.pid})")
        expect = watch.Expect(status_file(state, node["name"]), rec.pid, digest, endpoints_hash)
        records[expect.status] = rec
        expects.append(expect)
    agents = f"{len(expects)} agent{'s' if len(expects) != 1 else ''}"
    progress(f"waiting for {agents} to compile the datapath and apply the policy set")
    started = time.monotonic()
    try:
        for expect in expects:  # in start order: each line says when that agent was seen ready
            left = max(0.1, timeout - (time.monotonic() - started))
            watch.wait_status([expect], left, alive=lambda e: procs.alive(records[e.status]))
            node = records[expect.status].name.removeprefix("agent:")
            progress(f"agent of {node} ready ({time.monotonic() - started:.2f}s)")
        return time.monotonic() - started
    except watch.WaitError as exc:
        tails = "\n".join(f"--- {r.name}\n{procs.tail(r, 15)}" for r in records.values())
        raise LabError(f"node agents not ready: {exc}\n{tails}") from None


def apply(name: str, source: Path, timeout: float = APPLY_TIMEOUT) -> tuple[str, float]:
    """``lab apply``: replace the lab's policy set with ``source`` (already validated by the caller) and
    wait until every agent reports it applied. Returns (content hash, seconds waited)."""
    state = load_state(name)
    if state is None:
        raise NotFoundError(f"no lab named {name!r} (see `l7gate lab up`)")
    agents = agent_records(state)
    if not agents:
        raise LabError(f"lab {name}: no node agents recorded")
    dead = [n for n, r in agents.items() if not procs.alive(r)]
    if dead:
        raise LabError(f"lab {name}: node agents not running: {', '.join(dead)}")
    digest = install_policies(state, source)
    expects = [watch.Expect(status_file(state, n), r.pid, digest) for n, r in agents.items()]
    by_status = {e.status: agents[n] for e, n in zip(expects, agents, strict=True)}
    try:
        seconds = watch.wait_status(expects, timeout, alive=lambda e: procs.alive(by_status[e.status]))
    except watch.WaitError as exc:
        raise LabError(f"lab {name}: policy set {digest} not applied: {exc}") from None
    return digest, seconds


def stop_proxies(state: LabState) -> list[str]:
    """Stop the Envoy each node agent started (by the PID and start time in its PID file) and the socket
    keeper holding its DNS sockets; the agents are stopped already, and both outlive an agent on purpose."""
    from l7xds.errors import XdsError

    removed = []
    for node in datapath_info(state)["nodes"]:
        try:
            if stop_envoy(agent_dir(state), str(node["name"])):
                removed.append(f"envoy of {node['name']}")
        except XdsError as exc:
            raise LabError(str(exc)) from None
        if stop_keeper(agent_dir(state), str(node["name"])):
            removed.append(f"DNS socket keeper of {node['name']}")
    return removed


def destroy_datapaths(state: LabState) -> list[str]:
    """Stop the nodes' proxies, then remove each node's pinned datapath maps. The tc filters, the proxy
    routing rules and the devices live in the node namespaces, which ``down`` deletes right after."""
    from bpf.errors import DatapathError
    from bpf.loader import unpin

    removed = stop_proxies(state)
    for node in datapath_info(state)["nodes"]:
        pin_dir = PIN_ROOT / str(node["netns"])
        if pin_dir.exists():
            try:
                unpin(pin_dir)
            except DatapathError as exc:
                raise LabError(str(exc)) from None
            removed.append(f"datapath {pin_dir}")
    return removed


def restart_agent(
    name: str, node: str, timeout: float = AGENT_READY_TIMEOUT, *, graceful: bool = False
) -> tuple[procs.ProcRecord, float]:
    """Start the agent of ``node`` again and wait until it has applied the lab's current inputs; the new
    process replaces the old one in the lab state. Without ``graceful`` the old agent must be gone
    already (it died or was stopped). With ``graceful`` the old agent is still running: the new one
    starts beside it (adopting the datapath and Envoy, serving the same kept DNS sockets), and only
    once it is ready is the old one stopped with SIGTERM — no moment without a DNS proxy."""

    state = load_state(name)
    if state is None:
        raise NotFoundError(f"no lab named {name!r}")
    old = agent_records(state).get(node)
    running = old if old is not None and procs.alive(old) else None
    if running is not None and not graceful:
        raise LabError(f"lab {name}: the agent of {node} is running (pid {running.pid})")
    nodes = {n["name"]: n for n in datapath_info(state)["nodes"]}
    if node not in nodes:
        raise LabError(f"lab {name}: no node {node!r}")
    with contextlib.suppress(FileNotFoundError):
        status_file(state, node).unlink()
    rec = start_agent(state, node, str(nodes[node]["netns"]), lab_env())
    state.processes = [r for r in state.processes if r.name != f"agent:{node}"] + [rec]
    state.save()
    expect = watch.Expect(
        status_file(state, node),
        rec.pid,
        watch.content_hash(policies_link(state)),
        watch.content_hash(state.directory / "endpoints.json"),
    )
    try:
        seconds = watch.wait_status([expect], timeout, alive=lambda _e: procs.alive(rec))
    except watch.WaitError as exc:
        raise LabError(f"agent of {node} not ready: {exc}\n{procs.tail(rec, 15)}") from None
    if running is not None:
        procs.stop(running, timeout=10.0)  # drains its DNS queries; the new agent serves the rest
    return rec, seconds


@dataclass(frozen=True)
class Rollout:
    """What ``lab restart-agent`` did: the new agent, how long the node had no agent, how long the new
    agent took from its start to applying the lab's inputs."""

    old_pid: int | None
    new: procs.ProcRecord
    stop_seconds: float
    ready_seconds: float
    signal: str


def rollout_agent(
    name: str, node: str, *, kill: bool = False, timeout: float = AGENT_READY_TIMEOUT
) -> Rollout:
    """What a DaemonSet rollout does to the agent of ``node``: stop the running agent (SIGTERM and wait
    for it to exit, as the kubelet does; SIGKILL with ``kill``), then start a new one and wait until it has
    applied the lab's current policies and endpoints. Enforcement stays in the pinned datapath and Envoy
    meanwhile, and the DNS sockets stay with the socket keeper (queries queue until the new agent)."""
    state = load_state(name)
    if state is None:
        raise NotFoundError(f"no lab named {name!r} (see `l7gate lab up`)")
    nodes = {str(n["name"]) for n in datapath_info(state)["nodes"]}
    if node not in nodes:
        raise NotFoundError(f"lab {name}: no node {node!r} (nodes: {', '.join(sorted(nodes))})")
    old = agent_records(state).get(node)
    started = time.monotonic()
    how = "SIGKILL" if kill else "SIGTERM"
    if old is not None and procs.alive(old):
        if kill:
            old.process.signal(signal.SIGKILL)
            if not old.process.wait(10.0):
                raise LabError(f"lab {name}: the agent of {node} (pid {old.pid}) survived SIGKILL")
        else:
            procs.stop(old, timeout=30.0)  # the pod's terminationGracePeriodSeconds
    stopped = time.monotonic() - started
    rec, seconds = restart_agent(name, node, timeout)
    return Rollout(old.pid if old is not None else None, rec, stopped, seconds, how)


@dataclass(frozen=True)
class NodeProcess:
    """A process of a node's l7gate (the agent, its Envoy, its DNS socket keeper)."""

    what: str
    pid: int | None
    alive: bool


def node_processes(state: LabState, node: str) -> list[NodeProcess]:
    """The agent (from the lab state), the Envoy (from its PID file) and the DNS socket keeper (from its
    PID file, when it answers) of ``node``."""
    from l7.agent.dns import keeper_path
    from l7.agent.envoy_files import EnvoyRecord
    from l7.agent.socket_keeper import KeeperClient

    out = []
    agent = agent_records(state).get(node)
    out.append(NodeProcess("agent", agent.pid if agent else None, bool(agent and procs.alive(agent))))
    envoy = EnvoyRecord.load(agent_dir(state) / f"envoy-{node}.pid")
    out.append(NodeProcess("envoy", envoy.pid if envoy else None, bool(envoy and envoy.process.alive())))
    keeper = KeeperClient(keeper_path(agent_dir(state), node), timeout=0.5).alive()
    out.append(NodeProcess("dns-keeper", keeper, keeper is not None))
    return out


def lab_config(lab: str, node: str, state_dir: Path | None = None) -> AgentConfig:
    """The agent of ``node`` in lab ``lab``: the lab's policy set and endpoints, its veth names."""
    state = load_state(lab)
    if state is None:
        raise AgentError(f"no lab {lab!r} (start it with: l7gate lab up --name {lab})")
    dp = datapath_info(state)
    nodes = {n["name"]: n for n in dp["nodes"]}
    if node not in nodes:
        raise AgentError(f"lab {lab}: no node {node!r} (nodes: {', '.join(nodes)})")
    veths = {f"{p['namespace']}/{p['name']}": str(p["interface"]) for p in dp["pods"] if p["node"] == node}
    return AgentConfig(
        node=node,
        policies=policies_link(state),
        endpoints=state.directory / "endpoints.json",
        state_dir=state_dir or agent_dir(state),
        datapath_name=str(nodes[node]["netns"]),
        interfaces=lambda _file: veths,
        uplink=str(nodes[node]["uplink"]),
        services=LAB_SERVICES,
        dns=DnsSettings.from_env(),
    )
