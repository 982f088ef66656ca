"""The node agent's Prometheus endpoint (NodeService ``metrics``).

Everything is collected at scrape time, nothing is counted twice::

    agent (host.status(): ready, generation, errors, last apply, services' status dicts) ─┐
    datapath maps (entries of endpoints, ipcache, policy, conntrack)                      ├─► collect()
    flow logs of this node (l7.flows.FlowReader, read incrementally: drops by reason,     │     │
      verdicts, HTTP requests by status, DNS queries by rcode)                           ─┘     ▼
                                                                           GET http://ADDR/metrics

The endpoint listens on loopback of the agent's network namespace (``L7GATE_METRICS_ADDR``, default
``127.0.0.1:9962``; every lab node has its own namespace, so all use the same port). Services' status
keys that are missing are simply not exported.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from l7.flows import FlowReader

if TYPE_CHECKING:
    from l7.agent.node import AgentConfig
    from l7.agent.services import AppliedView, ServiceHost

log = logging.getLogger("l7gate.agent.metrics")
DEFAULT_ADDR = "127.0.0.1:9962"
ENV_ADDR = "L7GATE_METRICS_ADDR"
#: max_entries of the pinned maps (bpf/lib/maps.h).
MAP_CAPACITY = {"endpoints": 4096, "ipcache": 65536, "policy": 65536, "ct": 65536}


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


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


def _num(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class AgentCollector(Collector):
    """Builds every metric family from the agent at scrape time."""

    def __init__(self, host: ServiceHost, counts: FlowCounts) -> None:
        self.host = host
        self.counts = counts
        self._lock = threading.Lock()

    def _status(self) -> Mapping[str, Any]:
        status = getattr(self.host, "status", None)
        return status("running") if callable(status) else {}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        st = self._status()
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
        last = st.get("last_apply") or {}
        if _num(last.get("seconds")) is not None:
            g = GaugeMetricFamily("l7gate_policy_apply_seconds", "Duration of the last policy application")
            g.add_metric([], float(last["seconds"]))
            yield g

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
        yield from self._envoy(services.get("envoy") or services.get("xds") or {})
        yield from self._dns(services.get("dns") or {})

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

    def _envoy(self, st: Mapping[str, Any]) -> Iterator[Metric]:
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
        for key in ("convergence_seconds", "last_convergence_seconds"):
            value = _num(st.get(key))
            if value is not None:
                g = GaugeMetricFamily("l7gate_xds_convergence_seconds", "Last policy change to Envoy ACK")
                g.add_metric([], value)
                yield g
                break

    def _dns(self, st: Mapping[str, Any]) -> Iterator[Metric]:
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
        p99 = _num(st.get("lookup_to_allowed_p99_ms"))
        if p99 is not None:
            g = GaugeMetricFamily(
                "l7gate_dns_proxy_latency_p99_seconds", "99th percentile: query received to IPs allowed"
            )
            g.add_metric([], p99 / 1000)
            yield g
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


class MetricsService:
    """NodeService ``metrics``: the Prometheus endpoint on loopback."""

    name = "metrics"

    def __init__(self, cfg: AgentConfig, addr: str | None = None) -> None:
        self.cfg = cfg
        self.addr = parse_addr(addr or os.environ.get(ENV_ADDR, DEFAULT_ADDR))
        self.registry = CollectorRegistry(auto_describe=False)
        self._server: Any = None
        self._host: ServiceHost | None = None
        self.error: str | None = None
        self.datapath: dict[str, Any] = {}

    def start(self, host: ServiceHost) -> None:
        self._host = host
        counts = FlowCounts(FlowReader(self.cfg.state_dir), self.cfg.node)
        self.registry.register(AgentCollector(host, counts))
        try:
            started = start_http_server(self.addr[1], addr=self.addr[0], registry=self.registry)
        except OSError as exc:  # the agent enforces without its metrics; status says why
            self.error = f"cannot listen on {self.addr[0]}:{self.addr[1]}: {exc}"
            log.error("%s", self.error)
            return
        self._server = started[0] if isinstance(started, tuple) else None

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
