"""The node agent: policies + endpoints → resolution → plan → datapath; each change costs what it changes.

::

    policy dir ──┐  (inotify events, coalesced 3 ms; changed files parsed, the rest reused)
    endpoints ───┴─► load (keep the last good set on errors) ─► Engine ─► Applier ─► sync ─► Datapath
                                                     ▲   (incremental)  (per change)        │
                     learned FQDN IPs (dns: learn) ──┘          services.prepare / commit   │
                                           <state-dir>/agent-<node>.json  ◄─ status ───┘

Run it inside the node's network namespace (``nsenter --net=/run/netns/NODE``, not ``ip netns exec``,
which hides /sys/fs/bpf). SIGTERM/SIGINT end the loop and close the datapath *without* removing
programs or maps: the kernel keeps enforcing the last applied policy while the agent is down, and the
next agent adopts the pinned state.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf.errors import DatapathError
from bpf.maps import MapSizes
from l7.agent import watch
from l7.agent.applier import Applier
from l7.agent.fqdn import DnsSettings
from l7.agent.histogram import APPLY_BUCKETS, Histogram
from l7.agent.inotify import InputWatcher, WatchError
from l7.agent.inputs import Loaded, PolicyFiles
from l7.agent.services import AppliedView, NodeService
from l7.agent.sync import DatapathLike, SyncStats, protect_proxy_ports, release_proxy_ports, sync, sync_delta
from l7.endpoints import EndpointsError, EndpointsFile, EndpointsLoader, TopologyBuilder
from l7.errors import L7GateError
from l7.identity import IdentityAllocator
from l7.plan import ProxyPorts
from l7.policy.documents import Policy, PolicySourceError
from l7.resolve.engine import Engine

log = logging.getLogger("l7gate.agent")
POLL_INTERVAL = 0.5  # how often the loop wakes without an event (status, missing interfaces)
SAFETY_POLL = 5.0  # inputs looked at even without an inotify event (a missed event costs this much)
COALESCE = 0.003  # after an event, wait this long for the rest of a burst of writes
IDENTITY_SAVE_INTERVAL = 5.0  # the identity state file is written at most this often
METRICS_ADDRESS = "127.0.0.1:9962"  # the metrics service's default: loopback of the node's netns

#: Service name → "module:Class"; the class is constructed with the AgentConfig (see services.py).
SERVICES: Mapping[str, str] = {
    "envoy": "l7.agent.envoy:EnvoyService",
    "xds": "l7.agent.envoy:XdsOnlyService",
    "dns": "l7.agent.dns:DnsService",
    "flows": "l7.agent.flows:FlowLogService",
    "metrics": "l7.agent.metrics:MetricsService",
}
#: What a lab node's agent runs.
LAB_SERVICES: tuple[str, ...] = ("envoy", "dns", "flows", "metrics")


class AgentError(L7GateError):
    pass


@dataclass(frozen=True)
class AgentConfig:
    node: str
    policies: Path  # a directory (or a symlink to one) or one file
    endpoints: Path
    state_dir: Path
    datapath_name: str  # pin directory name under /sys/fs/bpf/l7gate (unique per node on the machine)
    interfaces: Callable[[EndpointsFile], Mapping[str, str]]  # endpoint key → host-side veth name
    uplink: str | None = None
    poll_interval: float = POLL_INTERVAL
    services: tuple[str, ...] = ()  # names in SERVICES, started in this order
    audit: bool = False  # audit mode for every endpoint (else per endpoint, from the endpoints file)
    dns: DnsSettings = field(default_factory=DnsSettings)  # the dns service's settings
    map_sizes: MapSizes = field(default_factory=MapSizes)  # the datapath maps' maximum entries
    metrics_address: str = METRICS_ADDRESS  # host:port of /metrics, /healthz, /readyz

    @property
    def status_file(self) -> Path:
        return watch.status_path(self.state_dir, self.node)


def route_interfaces(node: str) -> Callable[[EndpointsFile], Mapping[str, str]]:
    """Find each local endpoint's host-side veth from the route to its first IP (files mode). A found
    veth is remembered while the endpoint keeps its IP and the veth exists: an endpoints file change
    looks up only the endpoints that are new, moved or lost their veth."""
    known: dict[str, tuple[str, str]] = {}  # endpoint key → (first IP, veth)

    def find(file: EndpointsFile) -> Mapping[str, str]:
        from pyroute2 import IPRoute

        out: dict[str, str] = {}
        wanted: list[tuple[str, str]] = []
        for ep in file.endpoints:
            if ep.node not in (None, node) or not ep.ips:
                continue
            key = f"{ep.namespace}/{ep.name}"
            cached = known.get(key)
            if cached is not None and cached[0] == ep.ips[0]:
                try:
                    socket.if_nametoindex(cached[1])
                except OSError:
                    pass
                else:
                    out[key] = cached[1]
                    continue
            wanted.append((key, ep.ips[0]))
        if wanted:
            with IPRoute() as ipr:
                for key, ip in wanted:
                    try:
                        routes = ipr.route("get", dst=ip)
                        oif = routes[0].get_attr("RTA_OIF") if routes else None
                        if oif:
                            out[key] = socket.if_indextoname(int(oif))
                    except Exception as exc:  # noqa: BLE001  (netlink errors: the endpoint stays missing)
                        log.debug("no route to %s: %s", ip, exc)
        known.clear()
        known.update({key: (ip, out[key]) for key, ip in _first_ips(file, node).items() if key in out})
        return out

    return find


def _first_ips(file: EndpointsFile, node: str) -> dict[str, str]:
    return {
        f"{ep.namespace}/{ep.name}": ep.ips[0] for ep in file.endpoints if ep.node in (None, node) and ep.ips
    }


def make_services(cfg: AgentConfig) -> list[NodeService]:
    out: list[NodeService] = []
    for name in cfg.services:
        try:
            module, _, cls = SERVICES[name].partition(":")
        except KeyError:
            raise AgentError(f"unknown agent service {name!r} (known: {', '.join(SERVICES)})") from None
        out.append(getattr(importlib.import_module(module), cls)(cfg))
    return out


def ensure_bpffs() -> None:
    if not os.path.ismount("/sys/fs/bpf"):
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True, capture_output=True)


class Agent:
    """One node's agent. ``open_datapath`` is injectable for tests (default: :meth:`Datapath.open`)."""

    def __init__(
        self,
        cfg: AgentConfig,
        open_datapath: Callable[[str], DatapathLike] | None = None,
        services: list[NodeService] | None = None,
    ) -> None:
        self.cfg = cfg
        self._open = open_datapath or (
            lambda name: _open_datapath(name, cfg.map_sizes, self.ports.protected())
        )
        self.dp: DatapathLike | None = None
        self.services = make_services(cfg) if services is None else services
        self._lock = threading.RLock()
        self._view: AppliedView | None = None
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self._ids_path = cfg.state_dir / f"identities-{cfg.node}.json"
        self._ports_path = cfg.state_dir / "proxy-ports.json"
        self.allocator = IdentityAllocator.load(self._ids_path)
        self._engine = Engine(self.allocator, cfg.node)
        self.ports = ProxyPorts.load(self._ports_path)
        self.applier = Applier(self._engine, self.ports)
        self._synced = False  # the first sync (full: adopts the pinned maps) is done
        self._file: EndpointsFile | None = None
        self.started = time.monotonic()
        self.generation = 0
        self.ready = False
        self.ready_seconds: float | None = None
        self.errors: list[str] = []
        self.missing: tuple[str, ...] = ()
        self.last: dict[str, Any] = {}
        self._seen: tuple[str, str] | None = None  # (policies, endpoints) content hashes last looked at
        self._good_policies: tuple[tuple[Policy, ...], str] | None = None
        self._good_endpoints: tuple[EndpointsFile, str] | None = None
        self._applied: tuple[str, str] | None = None
        self._last_status: dict[str, Any] | None = None
        self._last_ifindexes: dict[str, int] = {}
        self._saved_identities = len(self.allocator)
        self._identities_saved_at = 0.0
        self._files = PolicyFiles(cfg.state_dir / f"policy-cache-{cfg.node}.bin")  # parsed YAML kept
        self._policy_cache_saved_at = 0.0
        self._audited_of: tuple[EndpointsFile, frozenset[str]] | None = None
        self._last_loaded: tuple[Loaded | PolicySourceError, str] | None = None
        self._topology = TopologyBuilder(self.allocator)
        self._endpoints_loader = EndpointsLoader()
        self.map_write_failures = 0
        self._endpoint_errors: list[str] = []
        self.apply_seconds = Histogram(APPLY_BUCKETS)  # every policy application (metrics)
        self.ticked: float | None = None  # monotonic time the main loop last went round (liveness)

    # ------------------------------------------------------------------ ServiceHost (services.py)
    @property
    def node(self) -> str:
        return self.cfg.node

    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @property
    def datapath(self) -> DatapathLike:
        assert self.dp is not None, "start() first"
        return self.dp

    @property
    def engine(self) -> Engine:
        return self._engine

    def learn(self, learned: Mapping[str, Iterable[str] | None], reason: str) -> bool:
        with self._lock:
            for ip, names in learned.items():
                if names is None:
                    self._engine.forget(ip)
                else:
                    self._engine.learn(ip, names)
            if self._file is None or self.dp is None:
                return False  # the first apply writes it
            stats = self._commit(self._file, reason, interfaces=False)
            return bool(stats.policy_written or stats.policy_deleted)

    def reapply(self, reason: str) -> None:
        """Give the services the current view again (e.g. secrets changed) and write what differs."""
        with self._lock:
            if self._file is not None and self.dp is not None:
                self._commit(self._file, reason, services=True)

    def last_view(self) -> AppliedView | None:
        return self._view

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Open the datapath (adopting a previous agent's programs, or compiling: bcc releases the GIL)
        while the policy files are parsed into :class:`PolicyFiles`' cache, then start the services."""
        self.write_status("starting")
        opened: list[DatapathLike | BaseException] = []

        def open_datapath() -> None:
            try:
                opened.append(self._open(self.cfg.datapath_name))
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                opened.append(exc)

        opener = threading.Thread(target=open_datapath, name="datapath-open", daemon=True)
        opener.start()
        with contextlib.suppress(PolicySourceError):  # the first step reports it
            self._files.load(self.cfg.policies)  # the first step finds these files parsed
        opener.join()
        if isinstance(opened[0], BaseException):
            raise opened[0]
        self.dp = opened[0]
        since = time.monotonic() - self.started
        log.info("datapath %s open (%.2fs since start)", self.cfg.datapath_name, since)
        for service in self.services:
            service.start(self)

    def close(self) -> None:
        for service in reversed(self.services):
            try:
                service.close()
            except Exception:  # one service failing to close must not stop the others
                log.exception("closing %s", service.name)
        if self.dp is not None:
            close = getattr(self.dp, "close", None)
            if close is not None:
                close()
            self.dp = None

    def run(self, stop: threading.Event) -> None:
        """Apply the inputs, then again whenever they change: inotify wakes the loop (a burst of
        writes is coalesced for :data:`COALESCE` s); without inotify, or every :data:`SAFETY_POLL` s
        with it, the inputs are looked at anyway."""
        watcher: InputWatcher | None = None
        # Until the first step is done the heap only grows (policies, the engine, the ipcache, learned
        # addresses): collections would scan it again and again for nothing (~25% of a start's parse).
        # The first sync freezes what it built (gc.freeze); the collector runs again after that step.
        gc.disable()
        try:
            self.start()
            try:
                watcher = InputWatcher([self.cfg.policies, self.cfg.endpoints])
            except WatchError as exc:
                log.warning("%s: polling the inputs every %.1fs", exc, self.cfg.poll_interval)
            last_look = 0.0
            look: set[str] | None = None  # which inputs to look at (None: all)
            while not stop.is_set():
                self.ticked = time.monotonic()
                due = time.monotonic() - last_look >= SAFETY_POLL or watcher is None
                if due or look is None or look or self.missing or not self.ready:
                    last_look = time.monotonic()
                    with self._lock:
                        self.step(inputs=None if due or look is None else frozenset(look))
                    gc.enable()
                with self._lock:
                    if self.ready:
                        self.save_identities(every=IDENTITY_SAVE_INTERVAL)
                        self.write_status("running")  # services' status changes on its own
                        self.save_policy_cache(every=IDENTITY_SAVE_INTERVAL)
                if watcher is None:
                    stop.wait(self.cfg.poll_interval)
                    continue
                changed = watcher.wait(self.cfg.poll_interval)
                if changed is None or changed:
                    stop.wait(COALESCE)
                    more = watcher.wait(0)  # what the burst added meanwhile
                    changed = None if changed is None or more is None else changed | more
                look = None if changed is None else self._inputs_of(changed)
        finally:
            gc.enable()
            if watcher is not None:
                watcher.close()
            if self.ready:
                self.save_identities()
                self.save_policy_cache()
            self.close()
            self.write_status("stopped")

    # ------------------------------------------------------------------------------------------ loop
    def _inputs_of(self, changed: set[Path]) -> set[str]:
        """Which inputs the changed paths (inotify) belong to: "policies", "endpoints"."""
        out: set[str] = set()
        policies, target = self.cfg.policies, self.cfg.policies.resolve()
        for path in changed:
            if path == self.cfg.endpoints:
                out.add("endpoints")
            elif path.is_relative_to(policies) or path.is_relative_to(target):  # the link, the set, a file
                out.add("policies")
        return out

    def step(self, force: bool = False, inputs: frozenset[str] | None = None) -> bool:
        """Look at the inputs (``inputs``: only those named, "policies" and/or "endpoints"; None: all);
        apply what changed (or an endpoint's veth that appeared). Policy files are parsed again only
        when their content changed (:class:`PolicyFiles`). Returns ``True`` when something was
        applied."""
        loaded: Loaded | PolicySourceError
        if inputs is not None and "policies" not in inputs and self._last_loaded is not None:
            loaded, policies_hash = self._last_loaded
        else:
            try:
                loaded = self._files.load(self.cfg.policies)
                policies_hash = loaded.content_hash
            except PolicySourceError as exc:
                loaded, policies_hash = exc, watch.content_hash(self.cfg.policies)
            self._last_loaded = (loaded, policies_hash)
        if inputs is not None and "endpoints" not in inputs and self._seen is not None:
            endpoints_hash = self._seen[1]
        else:
            endpoints_hash = watch.content_hash(self.cfg.endpoints)
        seen = (policies_hash, endpoints_hash)
        if not force and seen == self._seen and self.ready and not self._interfaces_changed():
            return False
        if seen != self._seen:
            self._load(loaded, seen)
        self._seen = seen
        if self._good_policies is None or self._good_endpoints is None:
            self.write_status("running")
            return False
        applied = (self._good_policies[1], self._good_endpoints[1])
        if not force and applied == self._applied and self.ready and not self._interfaces_changed():
            self.write_status("running")
            return False
        self.apply(self._good_policies[0], self._good_endpoints[0])
        self._applied = applied
        self.write_status("running")
        return True

    def _ifindexes(self, file: EndpointsFile) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, name in self.cfg.interfaces(file).items():
            with contextlib.suppress(OSError):
                out[key] = socket.if_nametoindex(name)
        return out

    def _interfaces_changed(self) -> bool:
        """Only while some local endpoint has no interface: did one appear (or change)?"""
        if not self.missing or self._good_endpoints is None:
            return False
        return self._ifindexes(self._good_endpoints[0]) != self._last_ifindexes

    def _load(self, loaded: Loaded | PolicySourceError, seen: tuple[str, str]) -> None:
        errors: list[str] = []
        if isinstance(loaded, PolicySourceError):
            errors.append(f"policies: {loaded}")
        elif loaded.errors:
            errors += [str(e) for e in loaded.errors]
        else:
            self._good_policies = (loaded.policies, seen[0])
        if self._seen is None or seen[1] != self._seen[1]:
            self._endpoint_errors = []
            try:
                file = self._endpoints_loader.load(self.cfg.endpoints)
            except EndpointsError as exc:
                self._endpoint_errors = [
                    f"{exc.source}: {p}: {m}" if p else f"{exc.source}: {m}" for p, m in exc.problems
                ]
            else:
                self._good_endpoints = (file, seen[1])
        errors += self._endpoint_errors
        for e in errors:
            log.error("rejected: %s", e, extra={"fields": {"event": "input_rejected", "error": e}})
        if errors:
            kept = "the last good set stays applied" if self._applied else "nothing applied yet"
            log.error(
                "%d error(s) in the inputs; %s",
                len(errors),
                kept,
                extra={
                    "fields": {
                        "event": "inputs_rejected",
                        "errors": errors,
                        "kept_last_good": bool(self._applied),
                    }
                },
            )
        self.errors = errors

    def apply(self, policies: tuple[Policy, ...], file: EndpointsFile) -> SyncStats:
        """Make ``policies`` and ``file`` the inputs: the engine re-resolves what they change."""
        assert self.dp is not None, "start() first"
        topology = self._topology.build(file)
        self._engine.set_policies(policies)
        self._engine.set_topology(topology)
        self._file = file
        stats = self._commit(file, "inputs changed", services=not self._synced)
        self.save_identities(every=IDENTITY_SAVE_INTERVAL)
        return stats

    def _commit(
        self, file: EndpointsFile, reason: str, *, services: bool = False, interfaces: bool = True
    ) -> SyncStats:
        """Write the engine's changes: services prepare (a proxy listens before anything is redirected
        to it), datapath, services commit. Services are called when the L7 unions or the endpoints'
        set changed, not when only entries changed (a DNS answer's new identity: ipcache and policy
        entries, nothing a proxy needs)."""
        assert self.dp is not None
        t0 = time.monotonic()
        first = not self._synced
        audited = self._audited(file)
        if interfaces or not self._synced:
            self._last_ifindexes = self._ifindexes(file)
        ifindexes = self._last_ifindexes
        if not self._synced:
            desired = self.applier.full(ifindexes, audited)
            services = True
        else:
            delta = self.applier.step(ifindexes, audited)
            services = services or delta.unions_changed or delta.endpoints_changed
        if self.applier.ports_assigned:
            self.ports.save(self._ports_path)
        if first or self.applier.ports_assigned:  # before a proxy listens there or a redirect points there
            protect_proxy_ports(self.dp, self.ports.protected())
        view = self._view
        if services or view is None or view.endpoints is not file:
            view = AppliedView(
                self.generation + 1, self.applier.local(), file, self.applier.unions, self.ports.ports
            )
        if services:
            for service in self.services:
                service.prepare(view)
        if not self._synced:
            uplink = None
            if self.cfg.uplink:
                try:
                    uplink = socket.if_nametoindex(self.cfg.uplink)
                except OSError:
                    log.error("uplink %s not found", self.cfg.uplink)
            stats = sync(self.dp, desired, uplink)
            self._synced = True
            # The node's state is now mostly long-lived objects: keep the collector from scanning them
            # again and again (a full collection of a 200 MB heap pauses the agent for ~0.3 s).
            gc.freeze()
        else:
            stats = sync_delta(self.dp, delta)
        if stats.failed:
            # Entries the kernel refused (a full map) are absent: their traffic is denied. The next
            # application compares everything with the maps again (and retries them).
            self._synced = False
            self.map_write_failures += stats.failed
            log.error(
                "%d datapath write(s) refused (map full?): %s",
                stats.failed,
                "; ".join(stats.notes[:3]),
                extra={
                    "fields": {"event": "map_write_failed", "count": stats.failed, "notes": stats.notes[:10]}
                },
            )
        self._view = view
        if services:
            for service in self.services:
                service.commit(view)
        if first:  # ports an earlier agent protected that are no longer proxy ports (after commit)
            release_proxy_ports(self.dp, self.ports.protected())
        self.missing = self.applier.missing
        self.generation += 1
        seconds = time.monotonic() - t0
        self.apply_seconds.observe(seconds)
        self.last = {"seconds": round(seconds, 4), "missing": list(self.missing), **stats.as_dict()}
        if not self.ready:
            self.ready = True
            self.ready_seconds = round(time.monotonic() - self.started, 3)
        log.log(
            logging.INFO if services else logging.DEBUG,
            "generation %d applied in %.1f ms (%s): %d endpoints, %d policies; changes %s",
            self.generation,
            seconds * 1000,
            reason,
            len(self.applier.state),
            len(self._engine.policies),
            {k: v for k, v in stats.as_dict().items() if v},
        )
        return stats

    def _audited(self, file: EndpointsFile) -> frozenset[str]:
        """The endpoints in audit mode (computed once per endpoints file)."""
        if self.cfg.audit:
            return frozenset(self._engine.endpoints)
        if self._audited_of is None or self._audited_of[0] is not file:
            self._audited_of = (file, file.audited())
        return self._audited_of[1]

    def save_identities(self, every: float = 0.0) -> None:
        """Write the identity state file when identities were allocated since the last write, at most
        once per ``every`` seconds (by the loop, off the apply and DNS answer paths: numbers are derived
        from labels, the file only keeps the numbers of colliding label sets stable)."""
        if time.monotonic() - self._identities_saved_at < every:
            return
        self._identities_saved_at = time.monotonic()
        if len(self.allocator) != self._saved_identities:
            self.allocator.save(self._ids_path)
            self._saved_identities = len(self.allocator)

    def save_policy_cache(self, every: float = 0.0) -> None:
        """Write the parsed policy YAML (:mod:`l7.agent.policy_cache`) when files were parsed since the
        last write, at most once per ``every`` seconds (by the loop, after the status: a restart then
        validates the files' documents without parsing them)."""
        if time.monotonic() - self._policy_cache_saved_at < every:
            return
        self._policy_cache_saved_at = time.monotonic()
        self._files.save_cache()

    # ---------------------------------------------------------------------------------------- status
    def status(self, state: str) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "node": self.cfg.node,
            "state": state,
            "ready": self.ready,
            "ready_seconds": self.ready_seconds,
            "generation": self.generation,
            "policies_hash": self._applied[0] if self._applied else None,
            "endpoints_hash": self._applied[1] if self._applied else None,
            "seen_policies_hash": self._seen[0] if self._seen else None,
            "seen_endpoints_hash": self._seen[1] if self._seen else None,
            "errors": self.errors,
            # rules a service refuses on this node, per policy with the field path (e.g. a TLS secret
            # missing): the controller lists the node as failing in that policy's status
            "policy_errors": [p for s in self.services for p in getattr(s, "policy_errors", ())],
            "missing": list(self.missing),
            "last_apply": self.last,
            "inputs": {"policies": str(self.cfg.policies), "endpoints": str(self.cfg.endpoints)},
            "map_write_failures": self.map_write_failures,
            "datapath": self.cfg.datapath_name,
            "services": {s.name: s.status() for s in self.services},
            "updated": time.time(),
        }

    def write_status(self, state: str) -> None:
        st = self.status(state)
        key = {k: v for k, v in st.items() if k != "updated"}
        if key == self._last_status:
            return
        if self._replaced():
            return  # a newer agent of this node took over (a graceful restart): its status stands
        watch.write_status(self.cfg.status_file, st)
        self._last_status = key

    def _replaced(self) -> bool:
        current = watch.read_status(self.cfg.status_file)
        pid = current.get("pid") if current else None
        return pid != os.getpid() and watch.pid_alive(pid) and self._last_status is not None


def _open_datapath(name: str, sizes: MapSizes, proxy_ports: frozenset[tuple[int, int]]) -> DatapathLike:
    from bpf.datapath import Datapath

    ensure_bpffs()
    return Datapath.open(name, sizes=sizes, proxy_ports=proxy_ports)


def run_agent(cfg: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT; exit status 0 on a clean stop."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping (the datapath keeps enforcing)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = Agent(cfg)
    try:
        agent.run(stop)
    except (L7GateError, DatapathError) as exc:
        log.error("%s", exc)
        return 1
    return 0
