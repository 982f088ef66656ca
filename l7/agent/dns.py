"""The node's DNS proxy as an agent service: ``toPorts.rules.dns`` and the answers that feed ``toFQDNs``.

::

    prepare(view): per DNS proxy port (view.ports_of("dns")) a DNSProxy on the service's event loop
                   (opened before the datapath redirects there; the port's rule sets updated in place)
    query ─► decide: the source must be a local endpoint, the name must match a matchName/matchPattern
             of the port's rule-set union ─► REFUSED (or NXDOMAIN) / forwarded
    answer ─► on_answer: credit the IPs to the name (FQDN cache), then host.learn(): the engine gives
              each IP the identity of the set of toFQDNs selectors matching its names (computed once
              per name), and the agent writes what that changes — the ipcache entry, and when the
              identity is new, the policy entries of the endpoints whose rules select it — before the
              answer is released. Nothing is re-resolved but what the answer changes.
    commit(view): proxies of ports no longer used closed; the local endpoints' addresses taken from it
    sweep (thread): expired IPs forgotten (see fqdn.py), state file saved

Why the port is enough to pick the rules: the datapath redirects (endpoint, egress, peer identity,
protocol, port) to the port of the *union of the L7 rule sets that apply to exactly that key*
(plan._l7_segments), so a query arriving on a port is one the union of that port's rule sets governs;
the DNS server's identity and port were already matched by the redirect entry itself. What the port
does not prove is where the query came from, so the source must be a local endpoint's IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpf.maps import MARK_FROM_PROXY
from dnsproxy import (
    ALLOWED,
    AUDITED,
    REFUSED,
    DNSProxy,
    Listeners,
    ProxyConfig,
    ProxyStats,
    QueryEvent,
    SocketSetupError,
)
from dnsproxy.policy import Protocol_, Verdict
from dnsproxy.wire import NXDOMAIN
from dnsproxy.wire import REFUSED as RCODE_REFUSED
from l7.agent.fqdn import FQDNCache, state_path, usable
from l7.agent.histogram import ALLOW_BUCKETS, Histogram
from l7.agent.services import AppliedView, ServiceHost
from l7.agent.socket_keeper import KeeperClient, KeeperError, ensure_keeper
from l7.flows import FlowLog, flow_path
from l7.fqdn_state import Record, StateStore
from l7.policy.fqdn import NameMatcher

if TYPE_CHECKING:
    from l7.agent.node import AgentConfig

log = logging.getLogger("l7gate.agent.dns")

SWEEP_INTERVAL = 1.0
_json_str = json.encoder.encode_basestring_ascii  # a str as a JSON string (C; what json.dumps uses)
FLOW_FLUSH_INTERVAL = 0.01
"""Seconds between writes of the queued DNS flow records (each write holds the proxy's loop while its
records are encoded: every 10 ms at 5,000 qps is ~50 records; every 50 ms doubled the p99, see
docs/dnsproxy.md)."""
MAX_QUEUED_EVENTS = 100_000
PERSIST_SLICE = 128
"""Names per slice of FQDN-cache persistence and expiry (journal, compaction, sweep): ~0.3 ms of work
at most, measured by tests/bench/dns_fqdn_persist.py."""
PERSIST_PAUSE = 0.001
"""Seconds slept between slices: the proxy's thread gets the GIL back (see l7.fqdn_state)."""
MAX_SELECTOR_MEMO = 200_000
Signature = tuple[frozenset[str], str | None, int]


@dataclass(frozen=True)
class _Local:
    """The node's endpoints as the decisions see them, taken from one applied view (replaced whole)."""

    endpoints: dict[str, str] = field(default_factory=dict)  # local endpoint IP → namespace/name
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
        settings = cfg.dns
        self.proxy_config = ProxyConfig(
            timeout=settings.timeout,
            refuse_rcode=NXDOMAIN if settings.refuse_nxdomain else RCODE_REFUSED,
            mark=MARK_FROM_PROXY,
            send_thread=settings.send_thread,
        )
        self.cache = FQDNCache(settings.cache)
        self._host: ServiceHost | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dns-proxy", daemon=True)
        self._proxies: dict[int, DNSProxy] = {}
        self._rules: dict[int, tuple[NameMatcher, ...]] = {}
        self._local = _Local()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="dns-sweep", daemon=True)
        self._flows: FlowLog | None = None
        self._store: StateStore | None = None
        self._selectors_view: tuple[AppliedView | None, dict[str, Any]] = (None, {})  # view → its selectors
        self._selector_memo: dict[str, list[str]] = {}  # name → selector texts (for that view)
        self.counters = {"fast": 0, "slow": 0, "expired": 0, "refused_source": 0, "flow_records_dropped": 0}
        self._events: list[tuple[float, str | None, QueryEvent]] = []  # flow records to write (proxy loop)
        self.lookup_to_allowed: list[float] = []  # seconds, answer arrived → IPs allowed (last 4096)
        self.allow_seconds = Histogram(ALLOW_BUCKETS)  # the same, every one (metrics)
        self.proxy_stats = ProxyStats()  # every port's proxy counts here (metrics)
        self._keeper: KeeperClient | None = None

    # -- NodeService ----------------------------------------------------------------------------
    def start(self, host: ServiceHost) -> None:
        self._host = host
        self._store = StateStore(state_path(host.state_dir, host.node), PERSIST_SLICE, PERSIST_PAUSE)
        state = self._store.load()
        restored = self.cache.restore(state, time.time()) if state is not None else 0
        if restored:
            log.info("FQDN cache: %d IPs restored from %s (+ journals)", restored, self._store.snapshot)
        self._flows = FlowLog(flow_path(host.state_dir, host.node, "dns"))
        path = keeper_path(host.state_dir, host.node)
        try:
            pid = ensure_keeper(path, host.state_dir / f"dns-sockets-{host.node}.log")
        except KeeperError as exc:  # the proxy still works; queries are lost while it restarts
            log.error("no socket keeper: %s", exc)
        else:
            self._keeper = KeeperClient(path)
            log.info("socket keeper pid %d holds the DNS listening sockets", pid)
        if restored:
            host.learn(dict(self.cache.learned()), "FQDN cache restored")
        self._thread.start()
        self._sweeper.start()

    def prepare(self, view: AppliedView) -> None:
        ports = view.ports_of("dns")
        self._local = self._local_from(view)  # before a proxy opens: it checks the source endpoint
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
        self._local = self._local_from(view)

    def status(self) -> dict[str, Any]:
        lat = sorted(self.lookup_to_allowed)

        def pick(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 3) if lat else None

        return {
            "ports": sorted(self._proxies),
            "cached_ips": len(self.cache),
            "cached_names": self.cache.names_count(),
            "overload_refused": self.proxy_stats.overload_refusals,
            "in_flight": self.proxy_stats.in_flight,
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
        self._persist(final=True)
        self._flush_events()
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
            stats=self.proxy_stats,
        )
        await proxy.start()
        return proxy

    # -- decisions ------------------------------------------------------------------------------
    def _decider(self, port: int) -> Any:
        def decide(  # noqa: PLR0917 - the proxy's interface
            source_ip: str, server_ip: str, server_port: int, protocol: Protocol_, qname: str, qtype: int
        ) -> Verdict:
            if source_ip not in self._local.endpoints:
                self.counters["refused_source"] += 1
                return REFUSED
            for matcher in self._rules.get(port, ()):
                if matcher.matches(qname):
                    return ALLOWED
            if source_ip in self._local.audited:  # audit mode: forwarded, reported as audit
                return AUDITED
            return REFUSED

        return decide

    def _on_event(self, event: QueryEvent) -> None:
        """Queue the query's flow record; the queue is written every :data:`FLOW_FLUSH_INTERVAL`
        (one write for many queries, off the query's path). Beyond :data:`MAX_QUEUED_EVENTS` records
        are dropped and counted (``flow_records_dropped``)."""
        if self._flows is None:
            return
        queued = self._events
        if len(queued) >= MAX_QUEUED_EVENTS:
            self.counters["flow_records_dropped"] += 1
            return
        queued.append((time.time(), self._local.endpoints.get(event.source_ip), event))
        if len(queued) == 1:
            self._loop.call_later(FLOW_FLUSH_INTERVAL, self._flush_events)

    def _flush_events(self) -> None:
        queued, self._events = self._events, []
        if self._flows is None or not queued:
            return
        try:
            if self.cfg.dns.flow_json:
                self._flows.write_many(flow_record(*item) for item in queued)
            else:
                self._flows.write_lines("".join([flow_line(*item) for item in queued]))
        except OSError as exc:
            log.warning("DNS flow log: %s", exc)

    # -- toFQDNs --------------------------------------------------------------------------------
    def _on_answer(
        self, source_ip: str, qname: str, ips_with_ttl: tuple[tuple[str, int], ...]
    ) -> Awaitable[None] | None:
        started = time.monotonic()
        ips = tuple((ip, ttl) for ip, ttl in ips_with_ttl if usable(ip))
        if not ips:
            return None
        assert self._host is not None
        if self.cache.refresh(qname, ips, time.time()):
            # every address is credited to the name and already in the ipcache: nothing to write, so
            # no wait for the agent's lock (which its main loop holds while it applies or writes status)
            self._done(started, "fast")
            return None
        if self._host.lock.acquire(blocking=False):
            try:
                self._learn(qname, ips, started)
            finally:
                self._host.lock.release()
            return None
        return self._loop.run_in_executor(None, self._learn_locked, qname, ips, started)

    def _learn_locked(self, qname: str, ips: tuple[tuple[str, int], ...], started: float) -> None:
        assert self._host is not None
        with self._host.lock:
            self._learn(qname, ips, started)

    def _learn(self, qname: str, ips: tuple[tuple[str, int], ...], started: float) -> None:
        """Credit ``ips`` to ``qname`` and have them written (under the agent's lock)."""
        assert self._host is not None
        engine = self._host.engine
        if not engine.name_selectors(qname):
            return  # no toFQDNs selector cares about this name
        ips = tuple((ip, ttl) for ip, ttl in ips if not engine.is_managed(ip))
        if not ips:
            return
        new = self.cache.add(qname, ips, time.time())
        unwritten = [ip for ip in self.cache.unwritten(qname) if ip not in new]  # an earlier write failed
        changed = new + unwritten + self.cache.take_evicted()
        if not changed:  # every address was already credited to the name: nothing to write
            self._done(started, "fast")
            return
        touched = self._host.learn({ip: self.cache.names_of(ip) for ip in changed}, f"DNS answer for {qname}")
        self.cache.written(qname, new + unwritten)  # from now on, answers with them skip the lock
        self._done(started, "slow" if touched else "fast")

    def _done(self, started: float, path: str) -> None:
        self.counters[path] += 1
        self.lookup_to_allowed.append(time.monotonic() - started)
        self.allow_seconds.observe(self.lookup_to_allowed[-1])
        if len(self.lookup_to_allowed) > 4096:
            del self.lookup_to_allowed[:1024]

    def _local_from(self, view: AppliedView) -> _Local:
        assert self._host is not None
        local = {ip: r.endpoint.key for r in view.local for ip in r.endpoint.ips}
        audited = {r.endpoint.key for r in view.local} if self.cfg.audit else view.endpoints.audited()
        return _Local(local, frozenset(ip for ip, key in local.items() if key in audited))

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
            removed = self.cache.expire(now, self._in_use(), PERSIST_SLICE, PERSIST_PAUSE)
            if removed:
                self.counters["expired"] += len(removed)
                log.info("FQDN cache: %d expired: %s", len(removed), removed[:5])
                ips = {ip for _, ip in removed}
                self._host.learn({ip: self.cache.names_of(ip) for ip in ips}, "FQDN cache expiry")
        self._persist()
        return removed

    def _persist(self, final: bool = False) -> None:
        """Journal the names that changed since the last call, in slices; compact the journals into a
        new snapshot when they outgrow it (see :mod:`l7.fqdn_state`). Never the whole cache at once:
        the proxy's thread waits for the GIL at most one slice."""
        store = self._store
        if store is None:
            return
        if final:
            store.pause = 0.0
        try:
            store.flush(self._take_changed)
            if store.needs_compaction() and not final:
                store.compact(self.cache.names(), self._records_of)
                log.info("FQDN cache state compacted (%d bytes)", store.snapshot_bytes)
        except OSError as exc:
            log.warning("FQDN cache state: %s", exc)

    def _take_changed(self, limit: int) -> list[Record]:
        return self._with_selectors(self.cache.take_changed(limit))

    def _records_of(self, names: list[str]) -> list[Record]:
        return self._with_selectors(self.cache.rows_of(names))

    def _with_selectors(self, rows: list[tuple[str, list[list[Any]]]]) -> list[Record]:
        """The names' journal records with the toFQDNs selectors each feeds (``l7gate fqdn cache``),
        computed once per name and applied view."""
        view = self._host.last_view() if self._host is not None else None
        known, selectors = self._selectors_view
        if view is not known:
            selectors = dict(view.fqdn_selectors()) if view is not None else {}
            self._selectors_view = (view, selectors)
            self._selector_memo = {}
        memo = self._selector_memo
        out: list[Record] = []
        for name, entries in rows:
            texts = memo.get(name)
            if texts is None:
                texts = memo[name] = [s.text for s in selectors.values() if s.matches_name(name)]
                if len(memo) > MAX_SELECTOR_MEMO:
                    memo.clear()
            out.append((name, entries, texts))
        return out


def flow_line(when: float, endpoint: str | None, event: QueryEvent) -> str:
    """One query's flow-log record as a JSON line: :func:`flow_record` through a preformatted template
    (~1.5 µs against ~4.5 µs for ``json.dumps``; the proxy's loop writes every record). Only the name
    and the endpoint can hold characters JSON escapes; the addresses come from the kernel
    (``inet_ntop``), the numbers are ints, protocol and verdict are fixed words."""
    ips = ",".join([f'["{ip}",{ttl}]' for ip, ttl in event.ips])
    return (
        f'{{"time":{when!r},"source_ip":"{event.source_ip}","source_port":{event.source_port},'
        f'"server_ip":"{event.server_ip}","server_port":{event.server_port},"protocol":"{event.protocol}",'
        f'"qname":{_json_str(event.qname)},"qtype":{event.qtype},"rcode":{event.rcode},"ips":[{ips}],'
        f'"verdict":"{event.verdict}","endpoint":{"null" if endpoint is None else _json_str(endpoint)}}}\n'
    )


def flow_record(when: float, endpoint: str | None, event: QueryEvent) -> dict[str, Any]:
    """One query's flow-log record (the reference for :func:`flow_line`)."""
    return {
        "time": when,
        "source_ip": event.source_ip,
        "source_port": event.source_port,
        "server_ip": event.server_ip,
        "server_port": event.server_port,
        "protocol": event.protocol,
        "qname": event.qname,
        "qtype": event.qtype,
        "rcode": event.rcode,
        "ips": [list(pair) for pair in event.ips],
        "verdict": event.verdict,
        "endpoint": endpoint,
    }


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
