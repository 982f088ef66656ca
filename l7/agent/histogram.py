"""Durations the agent counts where they happen and the metrics service exports as histograms.

::

    Agent._commit ──────────────── observe(apply seconds) ──► Agent.apply_seconds  ─┐
    EnvoyPublisher.publish ──────── observe(change → ACK) ──► .convergence         ─┼─► MetricsService
    DnsService (answer → allowed) ─ observe(seconds) ───────► .allow_seconds       ─┘   (at scrape)

Observing is a bisect and three additions under a lock taken by nobody else for longer (the scrape
copies the counts); the prometheus-client family is built only at scrape time
(:func:`dnsproxy.metrics.histogram_family`, the proxy's own histograms use it too).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass

from prometheus_client.core import HistogramMetricFamily

from dnsproxy.metrics import histogram_family

#: A policy application: from a few ms (one endpoint) to seconds (a first full sync of a big node).
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: An xDS change until Envoy ACKed it and listens.
CONVERGENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: A DNS answer held until its IPs are allowed in the datapath (sub-millisecond when nothing is written).
ALLOW_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    """The counts at one moment (``counts[i]``: observations in bucket ``i``, the last one above all)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        return histogram_family(name, doc, self.bounds, self.counts, self.total)


class Histogram:
    """Observations of one duration, in seconds (thread safe)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must increase: {bounds}")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        index = bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[index] += 1
            self._total += seconds

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return HistogramSnapshot(self.bounds, tuple(self._counts), self._total)
