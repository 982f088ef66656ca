"""The node's DNS proxy as an agent service: ``toPorts.rules.dns`` and the answers that feed ``toFQDNs``.

::

    prepare(view): per DNS proxy port (view.ports_of("dns")) a DNSProxy on the service's event loop
                   (opened before the datapath redirects there; the port's rule sets updated in place)
    query ─► decide: the source must be a local endpoint, the name must match a matchName/matchPattern
             of the port's rule-set union ─► REFUSED (or NXDOMAIN) / forwarded
    answer ─► on_answer: credit the IPs to the name (FQDN cache) and make them allowed, then release:
              fast path  the name's FQDN-selector set already has an identity the policy entries know
                         → ipcache written directly (under the agent lock)
              slow path  host.reapply(): resolution allocates the set's identity, the policy map gets
                         entries for it, the ipcache gets the IPs
    commit(view): proxies of ports no longer used closed; what the decisions need taken from the view
    sweep (thread): expired IPs removed (see fqdn.py), state file saved

Why the port is enough to pick the rules: the datapath redirects (endpoint, egress, peer identity,
protocol, port) to the port of the *union of the L7 rule sets that apply to exactly that key*
(plan._l7_segments), so a query arriving on a port is one the union of that port's rule sets governs;
the DNS server's identity and port were already matched by the redirect entry itself. What the port
does not prove is where the query came from, so the source must be a local endpoint's IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpf.maps import MARK_FROM_PROXY
from dnsproxy import ALLOWED, AUDITED, REFUSED, DNSProxy, Listeners, ProxyConfig, QueryEvent, SocketSetupError
from dnsproxy.policy import Protocol_, Verdict
from dnsproxy.wire import NXDOMAIN
from dnsproxy.wire import REFUSED as RCODE_REFUSED
from l7.agent.fqdn import CacheConfig, FQDNCache, state_path, usable
from l7.agent.services import AppliedView, Learned, ServiceHost
from l7.agent.socket_keeper import KeeperClient, KeeperError, ensure_keeper
from l7.flows import FlowLog, flow_path
from l7.identity import Network, fqdn_labels
from l7.labels import CIDR
from l7.policy.fqdn import NameMatcher
from l7.selectors import FQDNSelector

if TYPE_CHECKING:
    from l7.agent.node import AgentConfig

log = logging.getLogger("l7gate.agent.dns")

SWEEP_INTERVAL = 1.0
Signature = tuple[frozenset[str], str | None, int]


@dataclass(frozen=True)
class _Known:
    """What the decisions and the fast path read, taken from one applied view (replaced whole)."""

    local: dict[str, str] = field(default_factory=dict)  # local endpoint IP → namespace/name
    managed: frozenset[str] = frozenset()  # every endpoint and node IP (never credited to a name)
    selectors: tuple[FQDNSelector, ...] = ()  # toFQDNs selectors local policy entries use
    identities: frozenset[int] = frozenset()  # identities the policy entries were resolved with
    prefixes: tuple[Network, ...] = ()  # the policy CIDR prefixes (part of an FQDN identity's labels)
    signatures: dict[Signature, int] = field(default_factory=dict)  # seen in the view's ipcache
    audited: frozenset[str] = frozenset()  # local endpoint IPs in audit mode


def dns_matchers(rule_sets: Any) -> tuple[NameMatcher, ...]:
    """The matchName/matchPattern matchers of a union of DNS rule sets."""
    out: list[NameMatcher] = []
    for rule_set in rule_sets:
        for rule in rule_set.dns:
            if rule.match_name is not None:
                out.append(NameMatcher(match_name=rule.match_name))
            elif rule.match_pattern is not None:
                out.append(NameMatcher(match_pattern=rule.match_pattern))
    return tuple(out)


class DnsService:
    """The ``dns`` node service (see the module docstring)."""

    name = "dns"

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        env = os.environ
        refuse = env.get("L7GATE_DNS_REFUSE", "refused").lower()
        self.proxy_config = ProxyConfig(
            timeout=float(env.get("L7GATE_DNS_TIMEOUT", "2.0")),
            refuse_rcode=NXDOMAIN if refuse == "nxdomain" else RCODE_REFUSED,
            mark=MARK_FROM_PROXY,
        )
        self.cache = FQDNCache(CacheConfig.from_env())
        self._host: ServiceHost | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dns-proxy", daemon=True)
        self._proxies: dict[int, DNSProxy] = {}
        self._rules: dict[int, tuple[NameMatcher, ...]] = {}
        self._known = _Known()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="dns-sweep", daemon=True)
        self._flows: FlowLog | None = None
        self._state_file: Path | None = None
        self._saved = -1
        self._learn_seq = 0  # bumped on every cache change that needs a re-apply
        self._applied_seq = 0  # the learn_seq the last re-apply included
        self._reapply_lock = threading.Lock()
        self.counters = {"fast": 0, "slow": 0, "reapplies": 0, "expired": 0, "refused_source": 0}
        self.lookup_to_allowed: list[float] = []  # seconds, answer arrived → IPs allowed (last 4096)
        self._keeper: KeeperClient | None = None

    # -- NodeService ----------------------------------------------------------------------------
    def start(self, host: ServiceHost) -> None:
        self._host = host
        self._state_file = state_path(host.state_dir, host.node)
        restored = self.cache.load(self._state_file, time.time())
        if restored:
            log.info("FQDN cache: %d IPs restored from %s", restored, self._state_file)
        self._saved = self.cache.version
        self._flows = FlowLog(flow_path(host.state_dir, host.node, "dns"))
        path = keeper_path(host.state_dir, host.node)
        try:
            pid = ensure_keeper(path, host.state_dir / f"dns-sockets-{host.node}.log")
        except KeeperError as exc:  # the proxy still works; queries are lost while it restarts
            log.error("no socket keeper: %s", exc)
        else:
            self._keeper = KeeperClient(path)
            log.info("socket keeper pid %d holds the DNS listening sockets", pid)
        host.set_learned_source(self._learned)
        self._thread.start()
        self._sweeper.start()

    def prepare(self, view: AppliedView) -> None:
        ports = view.ports_of("dns")
        self._known = self._known_from(view)  # before a proxy opens: it checks the source endpoint
        for port, members in ports.items():
            self._rules[port] = dns_matchers(members)  # replaced whole: read without a lock
            if port not in self._proxies:
                try:
                    self._proxies[port] = self._run(self._open(port))
                except SocketSetupError as exc:  # the redirect fails closed; retried next apply
                    log.error("DNS proxy port %d: %s", port, exc)
                    continue
                log.info("DNS proxy listening on port %d", port)

    def commit(self, view: AppliedView) -> None:
        ports = view.ports_of("dns")
        for port in sorted(set(self._proxies) - set(ports)):
            proxy = self._proxies.pop(port)
            self._run(proxy.aclose())
            self._rules.pop(port, None)
            if self._keeper is not None:
                with contextlib.suppress(KeeperError):
                    self._keeper.drop(_keeper_key(port))
            log.info("DNS proxy on port %d closed", port)
        self._known = self._known_from(view)

    def status(self) -> dict[str, Any]:
        lat = sorted(self.lookup_to_allowed)

        def pick(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 3) if lat else None

        return {
            "ports": sorted(self._proxies),
            "cached_ips": len(self.cache),
            "lookup_to_allowed_ms": {"n": len(lat), "p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)},
            **self.counters,
        }

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # stop reading (queries queue in the kept sockets for the next agent), answer those in flight
            with contextlib.suppress(Exception):
                self._run(self._drain_all(self.proxy_config.timeout))
            for port in list(self._proxies):
                with contextlib.suppress(Exception):
                    self._run(self._proxies.pop(port).aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if self._sweeper.is_alive():
            self._sweeper.join(5)
        if not self._loop.is_running():
            self._loop.close()
        self._save(force=True)
        if self._flows is not None:
            self._flows.close()

    async def _drain_all(self, timeout: float) -> None:
        left = await asyncio.gather(*(p.drain(timeout) for p in self._proxies.values()))
        if any(left):
            log.warning("closing with %d DNS queries unanswered", sum(left))

    # -- event loop -----------------------------------------------------------------------------
    def _run(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(10)

    def _listeners(self, port: int) -> Listeners:
        """The listening sockets of ``port``: the very sockets an earlier agent used when the keeper
        still holds them (with the queries that queued up meanwhile), else new ones, handed to the
        keeper so they outlive this process."""
        if self._keeper is not None:
            try:
                kept = self._keeper.get(_keeper_key(port))
            except KeeperError as exc:
                log.error("socket keeper: %s", exc)
                kept = []
            if kept and all(s.getsockname()[1] == port for s in kept):
                log.info("DNS proxy port %d: took over %d kept sockets", port, len(kept))
                return Listeners(
                    udp=[s for s in kept if s.type == socket.SOCK_DGRAM],
                    tcp=[s for s in kept if s.type == socket.SOCK_STREAM],
                )
            for s in kept:
                s.close()
        made = Listeners.create(port)
        if self._keeper is not None:
            try:
                self._keeper.put(_keeper_key(port), made.udp + made.tcp)
            except KeeperError as exc:
                log.error("socket keeper: %s", exc)
        return made

    async def _open(self, port: int) -> DNSProxy:
        proxy = DNSProxy(
            self._listeners(port),
            self._decider(port),
            self._on_answer,
            config=self.proxy_config,
            on_event=self._on_event,
        )
        await proxy.start()
        return proxy

    # -- decisions ------------------------------------------------------------------------------
    def _decider(self, port: int) -> Any:
        def decide(  # noqa: PLR0917 - the proxy's interface
            source_ip: str, server_ip: str, server_port: int, protocol: Protocol_, qname: str, qtype: int
        ) -> Verdict:
            if source_ip not in self._known.local:
                self.counters["refused_source"] += 1
                return REFUSED
            for matcher in self._rules.get(port, ()):
                if matcher.matches(qname):
                    return ALLOWED
            if source_ip in self._known.audited:  # audit mode: forwarded, reported as audit
                return AUDITED
            return REFUSED

        return decide

    def _on_event(self, event: QueryEvent) -> None:
        if self._flows is None:
            return
        record: dict[str, Any] = {"time": time.time(), **event._asdict()}
        record["ips"] = [list(pair) for pair in event.ips]
        record["endpoint"] = self._known.local.get(event.source_ip)
        try:
            self._flows.write(record)
        except OSError as exc:
            log.warning("DNS flow log: %s", exc)

    # -- toFQDNs --------------------------------------------------------------------------------
    def _learned(self) -> Learned:
        return self.cache.learned()

    def _signature(self, selectors: frozenset[str], ip: str, known: _Known) -> Signature:
        addr = ipaddress.ip_address(ip)
        containing = [p for p in known.prefixes if p.version == addr.version and addr in p]
        best = str(max(containing, key=lambda p: p.prefixlen)) if containing else None
        return (selectors, best, addr.version)

    def _identity_for(self, selectors: frozenset[str], ip: str, known: _Known) -> int | None:
        """The identity an IP credited to names matching ``selectors`` must get, when the current
        policy entries already know it (else None: a re-apply must allocate and use it)."""
        sig = self._signature(selectors, ip, known)
        found = known.signatures.get(sig)
        if found is not None:
            return found
        assert self._host is not None
        labels = fqdn_labels(sorted(selectors), ipaddress.ip_address(ip), known.prefixes)
        identity = self._host.allocator.find(labels)
        if identity is not None and identity.id in known.identities:
            return identity.id
        return None

    def _on_answer(
        self, source_ip: str, qname: str, ips_with_ttl: tuple[tuple[str, int], ...]
    ) -> Awaitable[None] | None:
        started = time.monotonic()
        known = self._known
        selectors = frozenset(s.text for s in known.selectors if s.matches_name(qname))
        if not selectors:
            return None  # no toFQDNs selector here cares about this name
        ips = tuple((ip, ttl) for ip, ttl in ips_with_ttl if ip not in known.managed and usable(ip))
        if not ips:
            return None
        self.cache.add(qname, ips, time.time())
        writes = [(ip, self._identity_for(selectors, ip, known)) for ip, _ in ips]
        if all(identity is not None for _, identity in writes):
            assert self._host is not None
            if self._host.lock.acquire(blocking=False):
                try:
                    self._write(writes)
                finally:
                    self._host.lock.release()
                self._done(started, "fast")
                return None
            return self._loop.run_in_executor(None, self._write_locked, writes, started)
        self._learn_seq += 1
        return self._loop.run_in_executor(None, self._reapply, self._learn_seq, qname, started)

    def _write(self, writes: list[tuple[str, int | None]]) -> None:
        assert self._host is not None
        datapath = self._host.datapath
        for ip, identity in writes:
            assert identity is not None
            datapath.set_ipcache(ipaddress.ip_network(ip), identity, 0)

    def _write_locked(self, writes: list[tuple[str, int | None]], started: float) -> None:
        assert self._host is not None
        with self._host.lock:
            self._write(writes)
        self._done(started, "fast")

    def _reapply(self, wanted: int, qname: str, started: float) -> None:
        assert self._host is not None
        with self._reapply_lock:
            if self._applied_seq < wanted:  # an earlier re-apply did not include this answer yet
                seq = self._learn_seq
                self._host.reapply(f"DNS answer for {qname}")
                self._applied_seq = seq
                self.counters["reapplies"] += 1
        self._done(started, "slow")

    def _done(self, started: float, path: str) -> None:
        self.counters[path] += 1
        self.lookup_to_allowed.append(time.monotonic() - started)
        if len(self.lookup_to_allowed) > 4096:
            del self.lookup_to_allowed[:1024]

    def _known_from(self, view: AppliedView) -> _Known:
        assert self._host is not None
        allocator = self._host.allocator
        file = view.endpoints
        local = {
            ip: f"{ep.namespace}/{ep.name}"
            for ep in file.endpoints
            if ep.node in (None, self._host.node)
            for ip in ep.ips
        }
        managed = {ip for ep in file.endpoints for ip in ep.ips} | {ip for n in file.nodes for ip in n.ips}
        selectors: dict[str, FQDNSelector] = {}
        for r in view.resolved.endpoints:
            for entry in (*r.egress.allows, *r.egress.denies):
                if isinstance(entry.selector, FQDNSelector):
                    selectors.setdefault(entry.selector.text, entry.selector)
        prefixes: list[Network] = []
        by_prefix: dict[str, int] = {}
        for e in view.resolved.ipcache:
            by_prefix[e.prefix] = e.identity
            labels = allocator.lookup(e.identity)
            if labels is not None and any(lb.source == CIDR and lb.key == e.prefix for lb in labels):
                prefixes.append(ipaddress.ip_network(e.prefix))
        audited = {r.endpoint.key for r in view.resolved.endpoints} if self.cfg.audit else file.audited()
        known = _Known(
            audited=frozenset(ip for ip, key in local.items() if key in audited),
            local=local,
            managed=frozenset(managed),
            selectors=tuple(selectors[k] for k in sorted(selectors)),
            identities=frozenset(i.id for i in view.resolved.identities),
            prefixes=tuple(prefixes),
        )
        for ip, names in self.cache.learned().items():
            identity = by_prefix.get(str(ipaddress.ip_network(ip)))
            chosen = frozenset(s.text for s in known.selectors if any(s.matches_name(n) for n in names))
            if identity is not None and chosen:
                known.signatures[self._signature(chosen, ip, known)] = identity
        return known

    # -- expiry and state -------------------------------------------------------------------------
    def _in_use(self) -> Any:
        assert self._host is not None
        entries = getattr(self._host.datapath, "ct_entries", None)
        if entries is None:
            return lambda _ip: False
        with self._host.lock:
            rows = entries()
        now = time.monotonic_ns()
        live = [e for e in rows if e.expires_ns > now]
        used = {str(e.dst) for e in live} | {str(e.src) for e in live}
        return lambda ip: ip in used

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            try:
                self.sweep()
            except Exception:  # the sweep must go on
                log.exception("FQDN cache sweep")

    def sweep(self, now: float | None = None) -> list[tuple[str, str]]:
        """Remove expired IPs (re-applying so the ipcache drops them) and save the state file."""
        now = time.time() if now is None else now
        due = self.cache.next_expiry()
        removed: list[tuple[str, str]] = []
        if due is not None and due <= now and self._host is not None:
            removed = self.cache.expire(now, self._in_use())
            if removed:
                self.counters["expired"] += len(removed)
                log.info("FQDN cache: %d expired: %s", len(removed), removed[:5])
                self._host.reapply("FQDN cache expiry")
        self._save()
        return removed

    def _save(self, force: bool = False) -> None:
        if self._state_file is None or (not force and self.cache.version == self._saved):
            return
        version = self.cache.version
        try:
            selectors = self._known.selectors
            names = {
                name: [s.text for s in selectors if s.matches_name(name)] for name in self.cache.entries()
            }
            self.cache.save(self._state_file, {"selectors": names, "saved": time.time()})
            self._saved = version
        except OSError as exc:
            log.warning("FQDN cache state: %s", exc)


def keeper_path(state_dir: Path, node: str) -> Path:
    """The unix socket of the node's socket keeper (holds the DNS listening sockets across restarts)."""
    return state_dir / f"dns-sockets-{node}.sock"


def _keeper_key(port: int) -> str:
    return f"dns-{port}"


def stop_keeper(state_dir: Path, node: str) -> bool:
    """Stop the node's socket keeper (lab down): it closes the sockets it holds and exits."""
    client = KeeperClient(keeper_path(state_dir, node))
    pid = client.alive()
    if pid is None:
        return False
    client.stop()
    return True
