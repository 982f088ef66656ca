"""The proxy's counters: plain attributes on the hot path, exported to Prometheus on scrape.

Counting is an integer increment; :class:`StatsCollector` turns a :class:`ProxyStats` into
prometheus-client metric families when the registry is scraped, so the hot path never takes the
client library's locks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ProxyStats:
    """What the proxy counts."""

    def __init__(self) -> None:
        self.queries: Counter[tuple[str, str]] = Counter()
        """Queries by (verdict, rcode the client got), e.g. ``("allowed", "NOERROR")``."""
        self.overload_refusals = 0
        self.ignored_upstream = 0
        """Upstream datagrams ignored: unknown ID, wrong source, other question (updated on scrape)."""
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.in_flight = 0

    def observe_latency(self, seconds: float) -> None:
        self.latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1


class StatsCollector(Collector):
    """A Prometheus collector for one proxy's :class:`ProxyStats`.

    ``registry.register(StatsCollector(proxy.stats))``.
    """

    def __init__(self, stats: ProxyStats, prefix: str = "l7gate_dnsproxy") -> None:
        self._stats = stats
        self._prefix = prefix

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        stats = self._stats
        queries = CounterMetricFamily(
            f"{self._prefix}_queries", "DNS queries by verdict and rcode", labels=["verdict", "rcode"]
        )
        for (verdict, rcode), count in sorted(stats.queries.items()):
            queries.add_metric([verdict, rcode], count)
        yield queries
        yield CounterMetricFamily(
            f"{self._prefix}_overload_refusals", "Queries refused because too many were in flight",
            value=stats.overload_refusals,
        )
        yield CounterMetricFamily(
            f"{self._prefix}_upstream_ignored", "Upstream datagrams ignored (ID, source or question)",
            value=stats.ignored_upstream,
        )
        yield GaugeMetricFamily(f"{self._prefix}_in_flight", "Queries in flight", value=stats.in_flight)
        yield histogram_family(
            f"{self._prefix}_upstream_latency_seconds", "Time from forwarding a query to its answer",
            LATENCY_BUCKETS, stats.latency_buckets, stats.latency_sum,
        )


def histogram_family(
    name: str, doc: str, bounds: Sequence[float], counts: Sequence[int], total: float
) -> HistogramMetricFamily:
    """A histogram family from per-bucket counts (``counts[i]``: observations ``<= bounds[i]`` and above
    the bound before; the last one: above every bound), the way :class:`ProxyStats` counts them."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)
