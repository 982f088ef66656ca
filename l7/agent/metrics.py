"""The node agent's Prometheus endpoint (NodeService ``metrics``) and its health endpoints.

Everything is collected at scrape time, nothing is counted twice::

    agent (host.status(): ready, generation, errors, services' status dicts) ───────────┐
    histograms counted where they happen (l7.agent.histogram): policy applications,     │
      xDS change → ACK (Envoy service), DNS answer → IPs allowed (DNS service)          │
    the DNS proxies' own counters (dnsproxy.metrics.ProxyStats, one for every port)     ├─► collect()
    datapath maps (entries of endpoints, ipcache, policy, conntrack)                    │     │
    flow logs of this node (l7.flows.FlowReader, read incrementally: drops by reason,   │     ▼
      verdicts, HTTP requests by status, DNS queries by rcode)                         ─┘  GET ADDR/metrics
                                                        GET ADDR/healthz, /readyz (l7.agent.health)

ADDR is ``AgentConfig.metrics_address`` (``l7gate agent --metrics-address``, ``L7GATE_METRICS_ADDR``):
``127.0.0.1:9962`` by default, loopback of the agent's network namespace (every lab node has its own
namespace, so all use the same port); ``0.0.0.0:9962`` in the Kubernetes DaemonSet, where Prometheus
scrapes it. Services' status keys that are missing are simply not exported.
"""

from __future__ import annotations

import logging
import platform
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from dnsproxy.metrics import ProxyStats, StatsCollector
from l7.agent import health
from l7.agent.histogram import Histogram
from l7.errors import L7GateError
from l7.flows import FlowReader

if TYPE_CHECKING:
    from l7.agent.node import AgentConfig
    from l7.agent.services import AppliedView, ServiceHost

log = logging.getLogger("l7gate.agent.metrics")
#: max_entries of the pinned maps (bpf/lib/maps.h).
MAP_CAPACITY = {"endpoints": 4096, "ipcache": 65536, "policy": 65536, "ct": 65536}


class MetricsAddressError(L7GateError, ValueError):
    """A metrics address that is not ``host:port``."""


def parse_addr(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; no host: 127.0.0.1) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsAddressError(f"metrics address {text!r}: expected host:port, e.g. 127.0.0.1:9962")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_info() -> dict[str, str]:
    """The ``l7gate_build_info`` labels: l7gate's version, Python's, the running kernel's."""
    try:
        version = metadata.version("l7gate")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "python": platform.python_version(), "kernel": platform.release()}


def _capacity(dp: Any, name: str) -> int:
    """A map's maximum entries: the datapath's configured sizes (bpf.maps.MapSizes) where it has them."""
    sizes = getattr(dp, "sizes", None)
    return int(getattr(sizes, name, MAP_CAPACITY[name])) if sizes is not None else MAP_CAPACITY[name]


def _map_readers(dp: Any) -> dict[str, Callable[[], int]]:
    """Map name → entry count reader (each call walks the map)."""
    return {
        "endpoints": lambda: len(dp.endpoints()),
        "ipcache": lambda: len(dp.ipcache()),
        "ct": lambda: len(dp.ct_entries()),
        "policy": lambda: sum(len(p) for p in dp._current_policy().values()),
    }


class FlowCounts:
    """Counters over this node's flow logs, advanced incrementally at each scrape."""

    def __init__(self, reader: FlowReader, node: str) -> None:
        self.reader = reader
        self.node = node
        self.drops: Counter[str] = Counter()
        self.verdicts: Counter[tuple[str, str]] = Counter()  # (type, verdict)
        self.http: Counter[tuple[str, str]] = Counter()  # (status, verdict)
        self.dns: Counter[str] = Counter()  # rcode

    def update(self) -> None:
        for flow in self.reader.poll():
            if flow.node != self.node:
                continue
            self.verdicts[(flow.type, flow.verdict)] += 1
            if flow.type == "l3l4" and flow.verdict == "denied":
                self.drops[flow.reason or "unknown"] += 1
            elif flow.type == "http":
                self.http[(str(flow.http_status or 0), flow.verdict)] += 1
            elif flow.type == "dns":
                self.dns[flow.dns_rcode or "unknown"] += 1


DNS_PROXY_PREFIX = "l7gate_dns_proxy"


def _num(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _histogram(owner: object, attribute: str) -> Histogram | None:
    value = getattr(owner, attribute, None)
    return value if isinstance(value, Histogram) else None


class AgentCollector(Collector):
    """Builds every metric family from the agent at scrape time."""

    def __init__(self, host: ServiceHost, counts: FlowCounts) -> None:
        self.host = host
        self.counts = counts
        self._lock = threading.Lock()
        self._build = build_info()

    def _services(self) -> dict[str, object]:
        """The agent's running services by name (the histograms live on them)."""
        return {str(getattr(s, "name", "")): s for s in getattr(self.host, "services", ())}

    def _status(self) -> Mapping[str, Any]:
        status = getattr(self.host, "status", None)
        return status("running") if callable(status) else {}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        st = self._status()
        info = GaugeMetricFamily(
            "l7gate_build_info",
            "Always 1: l7gate's version, Python's and the kernel's",
            labels=list(self._build),
        )
        info.add_metric(list(self._build.values()), 1.0)
        yield info
        ready = GaugeMetricFamily("l7gate_agent_ready", "1 when the agent has applied its inputs once")
        ready.add_metric([], 1.0 if st.get("ready") else 0.0)
        yield ready
        gen = GaugeMetricFamily("l7gate_agent_generation", "Policy applications since the agent started")
        gen.add_metric([], float(st.get("generation") or 0))
        yield gen
        errs = GaugeMetricFamily("l7gate_agent_input_errors", "Errors in the current policy/endpoint inputs")
        errs.add_metric([], float(len(st.get("errors") or ())))
        yield errs
        refused = CounterMetricFamily(
            "l7gate_datapath_map_write_failures",
            "Datapath map writes the kernel refused (a full map: the entries stay absent, denied)",
        )
        refused.add_metric([], float(st.get("map_write_failures") or 0))
        yield refused
        applies = _histogram(self.host, "apply_seconds")
        if applies is not None:
            yield applies.snapshot().family(
                "l7gate_policy_apply_seconds", "Policy applications: inputs or DNS answers → datapath written"
            )

        view: AppliedView | None = self.host.last_view()
        if view is not None:
            eps = GaugeMetricFamily("l7gate_endpoints", "Endpoints known to the agent", labels=["scope"])
            eps.add_metric(["cluster"], float(len(view.endpoints.endpoints)))
            eps.add_metric(["local"], float(len(view.local)))
            yield eps
            rules = GaugeMetricFamily("l7gate_l7_rule_sets", "Distinct L7 rule sets", labels=["kind"])
            for kind in ("http", "dns"):
                sets = {rs.key for members in view.unions.values() for rs in members if rs.kind == kind}
                rules.add_metric([kind], float(len(sets)))
            yield rules
            ids = GaugeMetricFamily("l7gate_identities", "Security identities in use on the node")
            ids.add_metric([], float(len(self.host.allocator)))
            yield ids
            fq = GaugeMetricFamily("l7gate_fqdn_selectors", "toFQDNs selectors in use")
            fq.add_metric([], float(len(view.fqdn_selectors())))
            yield fq

        yield from self._maps()

        self.counts.update()
        drops = CounterMetricFamily(
            "l7gate_datapath_drops", "Packets dropped by the datapath", labels=["reason"]
        )
        for reason, n in sorted(self.counts.drops.items()):
            drops.add_metric([reason], float(n))
        yield drops
        verdicts = CounterMetricFamily(
            "l7gate_flow_verdicts", "Flow events by type and verdict", labels=["type", "verdict"]
        )
        for (kind, verdict), n in sorted(self.counts.verdicts.items()):
            verdicts.add_metric([kind, verdict], float(n))
        yield verdicts
        http = CounterMetricFamily(
            "l7gate_http_requests", "HTTP requests through Envoy", labels=["status", "verdict"]
        )
        for (status, verdict), n in sorted(self.counts.http.items()):
            http.add_metric([status, verdict], float(n))
        yield http
        dns = CounterMetricFamily("l7gate_dns_queries", "DNS queries through the DNS proxy", labels=["rcode"])
        for rcode, n in sorted(self.counts.dns.items()):
            dns.add_metric([rcode], float(n))
        yield dns

        services = st.get("services") or {}
        running = self._services()
        envoy = running.get("envoy") or running.get("xds")
        yield from self._envoy(services.get("envoy") or services.get("xds") or {}, envoy)
        yield from self._dns(services.get("dns") or {}, running.get("dns"))

    def _maps(self) -> Iterator[Metric]:
        try:
            dp: Any = self.host.datapath
        except AssertionError:
            return
        entries = GaugeMetricFamily(
            "l7gate_datapath_map_entries", "Entries in a datapath map", labels=["map"]
        )
        capacity = GaugeMetricFamily(
            "l7gate_datapath_map_capacity", "Maximum entries of a datapath map", labels=["map"]
        )
        for name, read in _map_readers(dp).items():
            try:
                value = read()
            except Exception:  # noqa: BLE001  (a fake datapath or a map being swapped: skip it)
                continue
            entries.add_metric([name], float(value))
            capacity.add_metric([name], float(_capacity(dp, name)))
        yield entries
        yield capacity

    def _envoy(self, st: Mapping[str, Any], service: object) -> Iterator[Metric]:
        if not st:
            return
        up = GaugeMetricFamily("l7gate_envoy_running", "1 when the node's Envoy runs")
        up.add_metric([], 1.0 if st.get("running") else 0.0)
        yield up
        for key, name, doc in (
            ("pushes", "l7gate_xds_pushes", "xDS snapshots pushed to Envoy"),
            ("acks", "l7gate_xds_acks", "xDS responses Envoy acknowledged"),
            ("nacks", "l7gate_xds_nacks", "xDS responses Envoy rejected"),
            ("restarts", "l7gate_envoy_restarts", "Times the agent restarted Envoy"),
        ):
            value = _num(st.get(key))
            if value is not None:
                c = CounterMetricFamily(name, doc)
                c.add_metric([], value)
                yield c
        convergence = _histogram(service, "convergence")
        if convergence is not None:
            yield convergence.snapshot().family(
                "l7gate_xds_convergence_seconds", "xDS changes: snapshot built → Envoy ACKed it and listens"
            )

    def _dns(self, st: Mapping[str, Any], service: object) -> Iterator[Metric]:
        if not st:
            return
        cached = _num(st.get("cached_ips"))
        if cached is not None:
            g = GaugeMetricFamily("l7gate_fqdn_cache_ips", "IPs learned from DNS answers")
            g.add_metric([], cached)
            yield g
        ports = st.get("ports")
        if isinstance(ports, list):
            g = GaugeMetricFamily("l7gate_dns_proxy_listeners", "DNS proxy ports open")
            g.add_metric([], float(len(ports)))
            yield g
        allow = _histogram(service, "allow_seconds")
        if allow is not None:
            yield allow.snapshot().family(
                "l7gate_dns_proxy_allow_latency_seconds",
                "DNS answers with addresses: received → IPs allowed in the datapath (then released)",
            )
        stats = getattr(service, "proxy_stats", None)
        if isinstance(stats, ProxyStats):  # queries, overload refusals, in flight, upstream latency
            yield from StatsCollector(stats, prefix=DNS_PROXY_PREFIX).collect()
        paths = CounterMetricFamily(
            "l7gate_dns_proxy_decisions", "DNS proxy decisions by path", labels=["path"]
        )
        for key in ("fast", "slow", "refused_source"):
            value = _num(st.get(key))
            if value is not None:
                paths.add_metric([key], value)
        yield paths
        value = _num(st.get("expired"))
        if value is not None:
            c = CounterMetricFamily("l7gate_fqdn_expired_ips", "Learned IPs removed after their TTL")
            c.add_metric([], value)
            yield c


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds: no line each."""


def serve(host: str, port: int, app: Any) -> tuple[WSGIServer, threading.Thread]:
    """A threaded HTTP server for ``app`` on ``host:port`` (IPv4 or IPv6), serving on a daemon thread."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(host, port, app, Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread


class MetricsService:
    """NodeService ``metrics``: ``/metrics``, ``/healthz`` and ``/readyz`` on the metrics address."""

    name = "metrics"

    def __init__(self, cfg: AgentConfig, addr: str | None = None) -> None:
        self.cfg = cfg
        self.addr = parse_addr(addr or cfg.metrics_address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.liveness_timeout = health.LIVENESS_TIMEOUT
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._host: ServiceHost | None = None
        self.error: str | None = None
        self.datapath: dict[str, Any] = {}

    def start(self, host: ServiceHost) -> None:
        self._host = host
        counts = FlowCounts(FlowReader(self.cfg.state_dir), self.cfg.node)
        self.registry.register(AgentCollector(host, counts))
        app = health.app(make_wsgi_app(self.registry), self._live, self._ready)
        try:
            self._server, self._thread = serve(self.addr[0], self.addr[1], app)
        except OSError as exc:  # the agent enforces without its metrics; status says why
            self.error = f"cannot listen on {self.addr[0]}:{self.addr[1]}: {exc}"
            log.error("%s", self.error)
            return
        self.addr = (self.addr[0], self._server.server_port)  # port 0: the one the kernel chose

    def _live(self) -> health.Probe:
        if not isinstance(self._host, health.Probed):
            return health.Probe(False, "the agent records no main loop")
        return health.liveness(self._host, time.monotonic(), self.liveness_timeout)

    def _ready(self) -> health.Probe:
        if not isinstance(self._host, health.Probed):
            return health.Probe(False, "the agent records no readiness")
        return health.readiness(self._host)

    def prepare(self, view: AppliedView) -> None:
        pass

    def commit(self, view: AppliedView) -> None:
        """After each application: what the datapath holds (programs attached, map entries)."""
        if self._host is None:
            return
        dp: Any = self._host.datapath
        info: dict[str, Any] = {}
        try:
            kinds = Counter(str(getattr(kind, "name", kind)).lower() for kind in dp.devices().values())
            info["programs_attached"] = dict(sorted(kinds.items()))
        except Exception:  # noqa: BLE001  (a fake datapath)
            pass
        for name, read in _map_readers(dp).items():
            try:
                info.setdefault("maps", {})[name] = {"entries": read(), "capacity": _capacity(dp, name)}
            except Exception:  # noqa: BLE001
                continue
        self.datapath = info

    def status(self) -> dict[str, Any]:
        host, port = self.addr
        return {
            "listen": f"{host}:{port}",
            "serving": self._server is not None,
            "error": self.error,
            "datapath": self.datapath,
        }

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
