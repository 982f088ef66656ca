"""The lab manager: ``Lab.up`` builds a lab from a topology, ``Lab.load`` finds a running one, ``exec`` runs
a command inside a pod, ``down`` removes everything the lab recorded in its state."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l7.lab import agents, certs, dns, netns, procs, ready
from l7.lab.addressing import Plan, PodPlan
from l7.lab.errors import LabError, NotFoundError
from l7.lab.layout import datapath
from l7.lab.procs import lab_env
from l7.lab.secrets import write_secrets
from l7.lab.servers import SERVE
from l7.lab.state import DEFAULT_LAB, LabState, check_name, free_index, lab_dir, labs_lock, load_state
from l7.lab.topology import Pod, Server, Topology, load_topology

Progress = Callable[[str], None]
READY_TIMEOUT = 20.0


def _quiet(_: str) -> None:
    pass


def start_node_agents(state: LabState, progress: Progress = _quiet) -> None:
    """Start the node agent in every node namespace of the lab and wait until each has applied the
    initial policy set (``state.policies``, copied into the lab's watched policy directory).

    Each agent runs as ``setsid nsenter --net=/run/netns/<node-netns> python -m l7.cli agent --lab NAME
    --node NODE`` (``ip netns exec`` would hide /sys/fs/bpf) and is recorded in ``state.processes``, so
    ``lab down`` stops it (see :mod:`l7.lab.agents`).
    """
    agents.start_agents(state, lab_env(), progress=progress)


def apply_policies(name: str, source: str | Path) -> tuple[str, float]:
    """``lab apply``: replace the lab's policy set with ``source`` (validated by the caller) and wait
    until every node agent has applied it. Returns (the set's content hash, seconds waited)."""
    return agents.apply(check_name(name), Path(source))


def _servers_argv(
    servers: list[Server], hostname: str, ips: list[str], tls: tuple[Path, Path] | None
) -> list[str]:
    """One ``serve.py`` process for all of a namespace's servers."""
    argv = [sys.executable, "-I", str(SERVE), "--hostname", hostname]
    for ip in ["127.0.0.1", "::1", *ips]:
        argv += ["--ip", ip]
    if tls is not None:
        argv += ["--cert", str(tls[0]), "--key", str(tls[1])]
    for server in servers:
        spec = {
            "kind": "http" if server.kind == "https" else server.kind,
            "port": server.effective_port,
            "tls": server.uses_tls,
            "paths": server.paths,
        }
        argv += ["--serve", json.dumps(spec)]
    return argv


@dataclass(frozen=True)
class ProcStatus:
    name: str
    netns: str
    pid: int
    alive: bool


class Lab:
    """A built lab. Create with :meth:`up`, find with :meth:`load`, remove with :meth:`down`."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.topology: Topology = state.topology_model()
        self.plan: Plan = state.plan()

    @property
    def name(self) -> str:
        return self.state.name

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def up(
        cls,
        topology: Topology | str | Path,
        name: str = DEFAULT_LAB,
        *,
        policies: str | Path | None = None,
        progress: Progress = _quiet,
        ready_timeout: float = READY_TIMEOUT,
        keep_on_failure: bool = False,
    ) -> Lab:
        """Build the lab ``name`` and wait until its servers and DNS answer. On failure everything built
        so far is removed again (unless ``keep_on_failure``; ``down`` removes it later)."""
        started = time.monotonic()
        check_name(name)
        if isinstance(topology, Topology):
            topo, source = topology, "<api>"
        else:
            topo, source = load_topology(topology), str(Path(topology).resolve())
        progress("allocating the lab's address block")
        with labs_lock():
            if load_state(name) is not None:
                raise LabError(f"lab {name!r} exists; run `l7gate lab down --name {name}` first")
            state = LabState(
                name=name,
                index=free_index(),
                topology_source=source,
                topology=topo.model_dump(mode="json", by_alias=True),
                policies=str(Path(policies).resolve()) if policies is not None else None,
            )
            plan = state.plan()
            taken = [ns for ns in plan.all_netns if netns.exists(ns)]
            if taken:
                raise LabError(f"namespaces already exist (not this lab's): {', '.join(taken)}")
            # Intent first: a crash from here on leaves a state that `down` can clean up.
            state.netns = plan.all_netns
            state.etc_netns = [p.netns for p in plan.pods]
            state.save()
        lab = cls(state)
        try:
            lab._build(progress, ready_timeout)
            # For the node agent's file source: the endpoints file shape (l7.endpoints).
            (state.directory / "endpoints.json").write_text(json.dumps(endpoints(state), indent=2))
            state.save()
            progress("starting node agents")
            start_node_agents(state, progress)
        except BaseException:
            state.phase = "failed"
            state.save()
            if not keep_on_failure:
                with contextlib.suppress(LabError):
                    lab.down()
            raise
        state.phase = "ready"
        state.up_seconds = round(time.monotonic() - started, 3)  # the whole of it, agents included
        state.save()
        return lab

    def _build(self, progress: Progress, ready_timeout: float) -> None:
        plan, topo, state = self.plan, self.topology, self.state
        progress(f"creating {len(plan.all_netns)} network namespaces")
        netns.add(plan.all_netns)
        for ns in plan.all_netns:
            netns.sysctl(ns, netns.BASE_SYSCTLS)
        for ns in [plan.fabric_netns, *(n.netns for n in plan.nodes)]:
            netns.sysctl(ns, netns.ROUTER_SYSCTLS)
        progress("wiring the fabric, nodes, pods and world hosts")
        netns.ip_batch(plan.fabric_netns, netns.fabric_commands(plan))
        for node in plan.nodes:
            netns.ip_batch(node.netns, netns.node_commands(plan, node))
        for pp in plan.pods:
            netns.ip_batch(pp.netns, netns.pod_commands(plan, pp))
        for world in plan.worlds:
            netns.ip_batch(world.netns, netns.world_commands(world))

        dns_pod = plan.pod(topo.dns_pod().key)
        for pp in plan.pods:
            netns.write_etc(
                pp.netns,
                {
                    "resolv.conf": dns.resolv_conf(dns_pod.v4, pp.namespace),
                    "hosts": dns.hosts_file(pp.name, pp.ips),
                },
            )

        progress("starting the DNS server and workloads")
        conf = state.directory / "dnsmasq.conf"
        conf.write_text(dns.dnsmasq_conf(topo, plan))
        probes: list[ready.Probe] = []
        dnsmasq = self._start(
            "dnsmasq",
            dns_pod.netns,
            ["dnsmasq", "-k", "-C", str(conf), "--pid-file=", "--log-facility=-", "--user=root"],
        )
        probes.append(self._probe(dnsmasq, lambda: ready.dns(dns_pod.netns, dns_pod.v4, dns_pod.name)))

        for pod in topo.pods:
            pp = plan.pod(pod.key)
            if pod.server is not None:
                probes += self._start_servers([pod.server], pp.name, pp.netns, pp.ips, [pp.name])
            for i, argv in enumerate(pod.commands):
                self._start(f"{pp.key}:command{i}", pp.netns, argv)
        for host in topo.world:
            wp = plan.world(host.name)
            if host.servers:
                probes += self._start_servers(host.servers, host.name, wp.netns, wp.ips, host.names)
        for lab_node in topo.nodes:
            node_plan = plan.node(lab_node.name)
            if lab_node.servers:
                probes += self._start_servers(
                    lab_node.servers, lab_node.name, node_plan.netns, node_plan.ips, [lab_node.name]
                )
        if topo.secrets:
            secrets_dir = agents.agent_dir(state) / "secrets"
            written = write_secrets(topo.secrets, state.directory / "certs", secrets_dir)
            state.files += [str(p) for p in written]

        progress(f"waiting for {len(probes)} servers to answer")
        ready.wait_all(probes, ready_timeout)

    def _start(self, name: str, ns: str, argv: list[str]) -> procs.ProcRecord:
        log = self.state.directory / "logs" / f"{name.replace('/', '_')}.log"
        rec = procs.start(name, ns, argv, log, env=lab_env())
        self.state.processes.append(rec)
        self.state.save()
        return rec

    def _probe(self, rec: procs.ProcRecord, attempt: Callable[[], bool]) -> ready.Probe:
        return ready.Probe(
            label=rec.name, attempt=attempt, alive=lambda: procs.alive(rec), details=lambda: procs.tail(rec)
        )

    def _start_servers(
        self, servers: list[Server], owner: str, ns: str, ips: list[str], names: list[str]
    ) -> list[ready.Probe]:
        tls = None
        if any(server.uses_tls for server in servers):
            tls = certs.self_signed(self.state.directory / "certs", owner, names, ips)
            self.state.files += [str(p) for p in tls]
        kinds = ",".join(f"{s.kind}:{s.effective_port}" for s in servers)
        rec = self._start(f"{owner}:{kinds}", ns, _servers_argv(servers, owner, ips, tls))

        def attempt(port: int) -> Callable[[], bool]:
            return lambda: ready.tcp(ns, ips[0], port)

        return [self._probe(rec, attempt(server.effective_port)) for server in servers]

    # ------------------------------------------------------------------------------------------ finding
    @classmethod
    def load(cls, name: str = DEFAULT_LAB) -> Lab:
        state = load_state(check_name(name))
        if state is None:
            raise NotFoundError(f"no lab named {name!r} (see `l7gate lab up`)")
        return cls(state)

    def pod(self, ref: str) -> PodPlan:
        """A pod by ``name`` or ``namespace/name``."""
        if "/" in ref:
            matches = [p for p in self.plan.pods if p.key == ref]
        else:
            matches = [p for p in self.plan.pods if p.name == ref]
        if not matches:
            known = ", ".join(p.key for p in self.plan.pods)
            raise NotFoundError(f"lab {self.name}: no pod {ref!r} (pods: {known})")
        if len(matches) > 1:
            raise NotFoundError(f"pod name {ref!r} is ambiguous: {', '.join(p.key for p in matches)}")
        return matches[0]

    def node_netns(self, node: str) -> str:
        return self.plan.node(node).netns

    def exec_argv(self, pod: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.pod(pod).netns, *argv]

    def exec(
        self, pod: str, argv: list[str], timeout: float | None = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the pod (with its resolv.conf); the exit status is the command's."""
        return subprocess.run(
            self.exec_argv(pod, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def processes(self) -> list[ProcStatus]:
        return [ProcStatus(r.name, r.netns, r.pid, procs.alive(r)) for r in self.state.processes]

    def endpoints(self) -> dict[str, Any]:
        return endpoints(self.state)

    def datapath(self) -> dict[str, Any]:
        return datapath(self.state)

    # ------------------------------------------------------------------------------------------ removing
    def down(self) -> list[str]:
        return down_state(self.state)


def endpoints(state: LabState) -> dict[str, Any]:
    """The lab's workloads in the endpoints-file shape (:mod:`l7.endpoints`) the node agent reads::

    {"endpoints": [{name, namespace, labels, ips, node, serviceAccount, ports}],
     "namespaces": {ns: {"labels": {...}}},
     "nodes": [{name, ips, labels}],
     "services": [{name, namespace, selector}],
     "fqdns": {external name: [ips]}}

    The DNS pod is an endpoint like any other (kube-system, ``k8s-app: kube-dns``). Where each workload
    lives (namespaces, interfaces) is in :func:`datapath`.
    """
    topo, plan = state.topology_model(), state.plan()
    pods: list[Pod] = topo.all_pods()
    out_pods = []
    for pod in pods:
        pp = plan.pod(pod.key)
        out_pods.append(
            {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": dict(pod.labels),
                "ips": pp.ips,
                "node": pp.node,
                "serviceAccount": pod.service_account,
                "ports": pod.effective_ports(),
            }
        )
    namespaces = sorted({p.namespace for p in pods} | set(topo.namespaces))
    return {
        "endpoints": out_pods,
        "namespaces": {ns: {"labels": dict(topo.namespaces.get(ns, {}))} for ns in namespaces},
        "nodes": [
            {"name": n.name, "ips": plan.node(n.name).ips, "labels": dict(n.labels)} for n in topo.nodes
        ],
        "services": [
            {"name": s.name, "namespace": s.namespace, "selector": dict(s.selector)} for s in topo.services
        ],
        "fqdns": dns.world_addresses(topo, plan),
    }


def down_state(state: LabState) -> list[str]:
    """Remove everything ``state`` records; return what was removed. Idempotent; errors are collected and
    raised together at the end (the state stays, so ``down`` can be retried)."""
    removed: list[str] = []
    errors: list[str] = []
    for rec in reversed(state.processes):
        try:
            if procs.stop(rec):
                removed.append(f"process {rec.name} (pid {rec.pid})")
        except (LabError, OSError) as exc:
            errors.append(str(exc))
    if not errors:  # agents stopped: remove the node datapaths (their filters and rules go with the netns)
        try:
            removed += agents.destroy_datapaths(state)
        except (LabError, OSError, ValueError) as exc:
            errors.append(f"datapath: {exc}")
    for ns in reversed(state.netns):
        try:
            left = netns.pids(ns)
            if left:  # never signalled: the lab stops only what it recorded
                removed.append(f"warning: {ns}: processes the lab did not start are still inside: {left}")
            if netns.delete(ns):
                removed.append(f"netns {ns}")
        except (LabError, OSError) as exc:
            errors.append(str(exc))
    for ns in state.etc_netns:
        try:
            if netns.remove_etc(ns):
                removed.append(f"/etc/netns/{ns}")
        except OSError as exc:
            errors.append(f"/etc/netns/{ns}: {exc}")
    if errors:
        raise LabError(f"lab {state.name}: down incomplete:\n  " + "\n  ".join(errors))
    directory = lab_dir(state.name)
    if directory.exists():
        shutil.rmtree(directory)  # never follows symlinks (a policy link may point anywhere)
    removed.append(f"state {directory}")
    return removed


def down(name: str = DEFAULT_LAB) -> list[str]:
    """Take the lab ``name`` down; nothing to do (an empty list) if there is no such lab."""
    state = load_state(check_name(name))
    if state is None:
        return []
    return down_state(state)
