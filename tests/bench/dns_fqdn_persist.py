"""FQDN-cache persistence at cluster scale: how long the DNS proxy's thread waits because of it.

The agent's sweeper thread saves the cache beside the DNS proxy's thread in the same interpreter; what
it does while holding the GIL (or the cache's lock) is time the proxy cannot answer. A probe thread
stands in for the proxy: it sleeps 0.2 ms in a loop and records how late each wake-up is. With N cached
(name, IP) entries (default 50,000, 20 toFQDNs selectors), per "second" 1 % of the names are answered
again (refreshed TTLs), then:

- ``full`` — what the agent did before issue 16's third pass, every second: the selectors of every
  name, the whole cache encoded in one ``json.dumps`` and rewritten (``FQDNCache.save``), plus the
  expiry check (a pass over every entry) and a sweep of the whole cache under one lock;
- ``journal`` — now: the changed names appended to the journal in slices of 256 (``StateStore.flush``),
  the expiry check O(1), the expiry sweep in slices; and once, the compaction (snapshot rewritten
  slice by slice) that runs when the journals outgrow the snapshot.

    .venv/bin/python -m tests.bench.dns_fqdn_persist [--entries 50000] [--rounds 5]

Output: per mode, the persistence call's duration and the probe's worst and p99 lateness (ms); ``idle``:
the probe alone for 0.5 s (the machine's own scheduling noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from l7.agent.dns import PERSIST_PAUSE, PERSIST_SLICE
from l7.agent.fqdn import CacheConfig, FQDNCache
from l7.fqdn_state import Record, StateStore
from l7.policy import model
from l7.selectors import fqdn_selector

SELECTORS = [fqdn_selector(model.FQDNSelector(match_pattern=f"*.zone{k}.test")) for k in range(20)]
PROBE_SLEEP = 0.0002
SLICE, PAUSE = PERSIST_SLICE, PERSIST_PAUSE  # the DNS service's


class Probe:
    """A thread that wants the GIL every 0.2 ms (like the proxy's loop under load); lateness per wake."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(PROBE_SLEEP)
            self.late.append(time.perf_counter() - t0 - PROBE_SLEEP)

    def measure(self, work: Callable[[], object]) -> dict[str, float]:
        self.late = []
        started = time.perf_counter()
        work()
        took = time.perf_counter() - started
        late = sorted(self.late) or [0.0]
        return {
            "call_ms": round(took * 1000, 2),
            "max_stall_ms": round(late[-1] * 1000, 2),
            "p99_stall_ms": round(late[int(len(late) * 0.99)] * 1000, 3),
        }

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build(entries: int, now: float) -> FQDNCache:
    cache = FQDNCache(CacheConfig(max_total=entries * 2))
    for i in range(entries):
        name = f"h{i}.zone{i % 20}.test"
        cache.add(name, [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 3600)], now - 60 + i / entries)
    return cache


def answer_some(cache: FQDNCache, now: float, share: float = 0.01) -> None:
    count = len(cache)
    step = max(1, int(1 / share))
    for i in range(0, count, step):
        cache.add(f"h{i}.zone{i % 20}.test", [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 3600)], now)


def selectors_of(rows: list[tuple[str, list[list[Any]]]], memo: dict[str, list[str]]) -> list[Record]:
    """The DNS service's ``_with_selectors`` (memoised per name)."""
    out: list[Record] = []
    for name, entries in rows:
        texts = memo.get(name)
        if texts is None:
            texts = memo[name] = [s.text for s in SELECTORS if s.matches_name(name)]
        out.append((name, entries, texts))
    return out


def full_save(cache: FQDNCache, path: Path, now: float) -> None:
    """The agent's save before the journal (``DnsService._save`` + the sweep's expiry check)."""
    times = [e.expires for rows in cache.entries().values() for e in rows]  # the old next_expiry
    min(times)
    cache.expire(now, lambda _ip: False)  # one pass under one lock (nothing due here)
    names = {name: [s.text for s in SELECTORS if s.matches_name(name)] for name in cache.entries()}
    cache.save(path, {"selectors": names, "saved": now})


def run(entries: int, rounds: int) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {"entries": entries, "selectors": len(SELECTORS)}
    with tempfile.TemporaryDirectory() as tmp, Probe() as probe:
        d = Path(tmp)
        out["idle"] = probe.measure(lambda: time.sleep(0.5))  # the machine's own noise
        cache = build(entries, now)
        rows = []
        for r in range(rounds):
            answer_some(cache, now + r)
            rows.append(probe.measure(lambda: full_save(cache, d / "full.json", now)))
        out["full"] = _summary(rows)
        out["full"]["file_bytes"] = (d / "full.json").stat().st_size

        cache = build(entries, now)
        store = StateStore(d / "fqdn-cache-n1.json", SLICE, PAUSE)
        store.load()
        memo: dict[str, list[str]] = {}
        take = lambda limit: selectors_of(cache.take_changed(limit), memo)  # noqa: E731
        out["journal_first"] = probe.measure(lambda: store.flush(take))  # every name is new
        rows = []
        for r in range(rounds):
            answer_some(cache, now + r)

            def step() -> None:
                cache.next_expiry()
                cache.expire(now, lambda _ip: False, SLICE, PAUSE)
                store.flush(take)

            rows.append(probe.measure(step))
        out["journal"] = _summary(rows)
        out["journal"]["bytes_per_round"] = int(store.journal_bytes / (rounds + 1))
        out["compaction"] = probe.measure(
            lambda: store.compact(cache.names(), lambda names: selectors_of(cache.rows_of(names), memo))
        )
        out["compaction"]["file_bytes"] = store.snapshot_bytes
    return out


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {
        "call_ms": round(statistics.median(r["call_ms"] for r in rows), 2),
        "max_stall_ms": max(r["max_stall_ms"] for r in rows),
        "p99_stall_ms": round(statistics.median(r["p99_stall_ms"] for r in rows), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.entries, args.rounds), indent=1))


if __name__ == "__main__":
    main()
