"""The FQDN cache: which IPs the DNS proxy saw for which names, and until when.

::

    allowed answer (name, [(ip, ttl)]) ─► add: TTL = max(lowest TTL in the chain, min_ttl);
                                          at most max_ips per name (the oldest evicted), at
                                          most max_total IPs in all (the names answered longest
                                          ago evicted whole: a flood of fresh names under a
                                          wildcard cannot grow the cache or the maps; an evicted
                                          IP loses its FQDN identity — fail closed)
    learned() ─► IP → names            ─► the resolver (FQDN identities, ipcache)
    expired(now, in_use) ─► removals   ─► TTL passed and no conntrack entry uses the IP, or
                                          TTL + grace passed (then removed whatever uses it: the
                                          datapath's conntrack keeps established flows' verdicts)

Times are unix seconds (the state file survives a restart). Thread-safe: the DNS proxy's loop adds,
the agent's apply reads, the expiry sweep removes.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from l7.fqdn_state import read_state, snapshot_path

DEFAULT_MIN_TTL = 0
DEFAULT_MAX_IPS = 50
DEFAULT_GRACE = 5.0
DEFAULT_MAX_TOTAL = 65536


@dataclass(frozen=True)
class CacheConfig:
    min_ttl: int = DEFAULT_MIN_TTL
    """Seconds an IP stays allowed at least, whatever TTL the answer had."""
    max_ips: int = DEFAULT_MAX_IPS
    """IPs kept per name; a new one beyond that evicts the oldest."""
    grace: float = DEFAULT_GRACE
    """Seconds past the TTL an IP still used by a tracked connection is kept."""
    max_total: int = DEFAULT_MAX_TOTAL
    """(name, IP) entries kept in all; beyond that the names answered longest ago are evicted whole."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CacheConfig:
        """``L7GATE_DNS_MIN_TTL``, ``L7GATE_DNS_MAX_IPS``, ``L7GATE_DNS_GRACE``, ``L7GATE_DNS_MAX_TOTAL``
        (unset: defaults)."""
        env = dict(os.environ) if env is None else env
        return cls(
            min_ttl=int(env.get("L7GATE_DNS_MIN_TTL", DEFAULT_MIN_TTL)),
            max_ips=max(1, int(env.get("L7GATE_DNS_MAX_IPS", DEFAULT_MAX_IPS))),
            grace=float(env.get("L7GATE_DNS_GRACE", DEFAULT_GRACE)),
            max_total=max(1, int(env.get("L7GATE_DNS_MAX_TOTAL", DEFAULT_MAX_TOTAL))),
        )


@dataclass(frozen=True)
class DnsSettings:
    """The DNS service's settings (part of the agent's configuration; read from the environment only
    at the edge, by the CLI: :meth:`from_env`)."""

    timeout: float = 2.0
    """Seconds an upstream server has to answer (then SERVFAIL)."""
    refuse_nxdomain: bool = False
    """Answer names no rule allows with NXDOMAIN instead of REFUSED."""
    cache: CacheConfig = CacheConfig()
    send_thread: bool = False
    """Batches of replies and upstream queries leave through a second thread (see
    ``dnsproxy.ProxyConfig.send_thread``)."""
    flow_json: bool = False
    """Encode DNS flow records with ``json.dumps`` (the reference encoder, ~3x slower) instead of the
    preformatted template (``l7.agent.dns.flow_line``); for A/B runs."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> DnsSettings:
        """``L7GATE_DNS_TIMEOUT``, ``L7GATE_DNS_REFUSE`` (refused|nxdomain), ``L7GATE_DNS_SEND_THREAD``
        (1|0), ``L7GATE_DNS_FLOW_JSON`` (1|0) and the cache's variables."""
        env = dict(os.environ) if env is None else env
        return cls(
            timeout=float(env.get("L7GATE_DNS_TIMEOUT", "2.0")),
            refuse_nxdomain=env.get("L7GATE_DNS_REFUSE", "refused").lower() == "nxdomain",
            cache=CacheConfig.from_env(env),
            send_thread=env.get("L7GATE_DNS_SEND_THREAD", "0") == "1",
            flow_json=env.get("L7GATE_DNS_FLOW_JSON", "0") == "1",
        )


class CachedIP(NamedTuple):
    """A tuple: cheaper for the garbage collector to traverse than a dataclass (a full collection over
    50,000 entries 36–37 ms instead of 44–48 ms: a stall of the DNS proxy's thread)."""

    ip: str
    ttl: int
    learned: float  # unix time of the latest answer carrying it
    expires: float  # learned + ttl


@functools.lru_cache(maxsize=4096)
def usable(ip: str) -> bool:
    """Whether an answered address may be credited at all (never loopback, link-local, multicast,
    unspecified). Memoised: the same addresses are answered again and again."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified)


class FQDNCache:
    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config or CacheConfig()
        self._lock = threading.Lock()
        self._names: dict[str, dict[str, CachedIP]] = {}  # name → ip → entry (both oldest first)
        self._total = 0  # entries in all
        self._ips: dict[str, set[str]] = {}  # ip → names
        self._evicted: list[str] = []  # IPs dropped by the per-name cap, until taken
        self._unwritten: set[tuple[str, str]] = set()  # (name, ip) credited, not yet in the ipcache
        self._changed: dict[str, None] = {}  # names changed since taken (for the journal), in order
        self._earliest = float("inf")  # no entry expires before (lower bound; see next_expiry)
        self.version = 0  # bumped on every change

    # -- changes --------------------------------------------------------------------------------
    def add(self, name: str, ips_with_ttl: Iterable[tuple[str, int]], now: float) -> list[str]:
        """Credit ``ips_with_ttl`` to ``name``; returns the IPs that are new for the name (they count as
        not yet written until :meth:`written`)."""
        with self._lock:
            return self._credit(name, ips_with_ttl, now)

    def refresh(self, name: str, ips_with_ttl: tuple[tuple[str, int], ...], now: float) -> bool:
        """When every IP is already credited to ``name`` *and written* (:meth:`written`), credit the
        answer again (TTLs, order) and return True: nothing is new, nothing to write, no lock but the
        cache's. Otherwise change nothing and return False (the caller takes the full path)."""
        with self._lock:
            entries = self._names.get(name)
            unwritten = self._unwritten
            if entries is None or any(ip not in entries or (name, ip) in unwritten for ip, _ in ips_with_ttl):
                return False
            self._credit(name, ips_with_ttl, now)
            return True

    def written(self, name: str, ips: Iterable[str]) -> None:
        """``ips`` of ``name`` are in the ipcache now (see :meth:`refresh`)."""
        with self._lock:
            for ip in ips:
                self._unwritten.discard((name, ip))

    def unwritten(self, name: str) -> list[str]:
        """The IPs credited to ``name`` and not yet written (a write that failed is retried)."""
        with self._lock:
            return [ip for ip in self._names.get(name, ()) if (name, ip) in self._unwritten]

    def _credit(self, name: str, ips_with_ttl: Iterable[tuple[str, int]], now: float) -> list[str]:
        """:meth:`add`'s work; the caller holds ``self._lock``."""
        new: list[str] = []
        entries = self._names.pop(name, None)  # re-inserted: the latest answered name is the newest
        if entries is None:
            entries = {}
        self._names[name] = entries
        self._changed[name] = None
        for ip, answered in ips_with_ttl:
            ttl = max(int(answered), self.config.min_ttl)
            known = entries.pop(ip, None)  # re-inserted: the latest answer is the newest entry
            if known is None:
                new.append(ip)
                self._ips.setdefault(ip, set()).add(name)
                self._unwritten.add((name, ip))
                self._total += 1
            entry = entries[ip] = CachedIP(ip, ttl, now, max(now + ttl, known.expires if known else 0.0))
            self._earliest = min(self._earliest, entry.expires)
        while len(entries) > self.config.max_ips:
            oldest = next(iter(entries))
            del entries[oldest]
            self._unindex(oldest, name)
            self._evicted.append(oldest)
            self._total -= 1
        while self._total > self.config.max_total:
            self._evict_oldest_name(keep=name)
        self.version += 1
        return new

    def expire(
        self, now: float, in_use: Callable[[str], bool], slice_names: int = 0, pause: float = 0.0
    ) -> list[tuple[str, str]]:
        """Remove the entries whose TTL passed and that no connection uses (``in_use(ip)``), or whose
        TTL + grace passed. Returns the removed (name, ip). ``slice_names``: go through the names that
        many at a time, taking the lock per slice and sleeping ``pause`` between slices (a large cache
        is swept without holding the lock, or the GIL, for long)."""
        with self._lock:
            names = list(self._names)
            self._earliest = float("inf")  # recomputed by this pass (credits meanwhile lower it)
        step = slice_names or max(1, len(names))
        removed: list[tuple[str, str]] = []
        earliest = float("inf")
        for start in range(0, len(names), step):
            if start and pause:
                time.sleep(pause)
            with self._lock:
                for name in names[start : start + step]:
                    entries = self._names.get(name)
                    if entries is None:
                        continue
                    for ip, entry in list(entries.items()):
                        if entry.expires > now or (entry.expires + self.config.grace > now and in_use(ip)):
                            earliest = min(earliest, entry.expires)
                            continue
                        del entries[ip]
                        self._unindex(ip, name)
                        self._total -= 1
                        removed.append((name, ip))
                        self._changed[name] = None
                    if not entries:
                        del self._names[name]
        with self._lock:
            self._earliest = min(self._earliest, earliest)
            if removed:
                self.version += 1
        return removed

    def _evict_oldest_name(self, keep: str) -> None:
        """Drop the name answered longest ago (``keep``'s own oldest IP when it is the only name)."""
        oldest = next(iter(self._names))
        entries = self._names[oldest]
        if oldest == keep and len(self._names) > 1:
            self._names[oldest] = self._names.pop(oldest)  # to the end: the next oldest goes
            oldest = next(iter(self._names))
            entries = self._names[oldest]
        victims = list(entries) if oldest != keep else [next(iter(entries))]
        self._changed[oldest] = None
        for ip in victims:
            del entries[ip]
            self._unindex(ip, oldest)
            self._evicted.append(ip)
        self._total -= len(victims)
        if not entries:
            del self._names[oldest]

    def _unindex(self, ip: str, name: str) -> None:
        self._unwritten.discard((name, ip))
        names = self._ips.get(ip)
        if names is not None:
            names.discard(name)
            if not names:
                del self._ips[ip]

    def names_of(self, ip: str) -> tuple[str, ...] | None:
        """The names ``ip`` is credited to (None: none any more)."""
        with self._lock:
            names = self._ips.get(ip)
            return tuple(sorted(names)) if names else None

    def take_evicted(self) -> list[str]:
        """The IPs the per-name cap dropped since the last call."""
        with self._lock:
            out, self._evicted = self._evicted, []
            return out

    def next_expiry(self) -> float | None:
        """When the next entry expires at the earliest (a lower bound, made exact by :meth:`expire`;
        kept on every change, so no pass over the cache)."""
        with self._lock:
            return self._earliest if self._names else None

    # -- views ----------------------------------------------------------------------------------
    def learned(self) -> dict[str, list[str]]:
        """IP → the names it is credited to (the resolver's ``learned``)."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for name, entries in self._names.items():
                for ip in entries:
                    out.setdefault(ip, []).append(name)
        return out

    def entries(self) -> dict[str, list[CachedIP]]:
        with self._lock:
            return {name: list(entries.values()) for name, entries in sorted(self._names.items())}

    def __len__(self) -> int:
        return self._total

    def names_count(self) -> int:
        return len(self._names)

    # -- state file -----------------------------------------------------------------------------
    def take_changed(self, limit: int) -> list[tuple[str, list[list[Any]]]]:
        """Up to ``limit`` names changed since they were last taken, each with its rows now
        (``[[ip, ttl, learned, expires], ...]``; none: the name is gone) — the journal's input. Work
        proportional to ``limit``, under the cache's lock."""
        with self._lock:
            changed = self._changed
            out: list[tuple[str, list[list[Any]]]] = []
            for name in changed:
                out.append((name, self._rows(name)))
                if len(out) >= limit:
                    break
            for name, _ in out:
                del changed[name]
            return out

    def names(self) -> list[str]:
        """Every name, oldest answered first (a compaction's list; read in slices with :meth:`rows_of`)."""
        with self._lock:
            return list(self._names)

    def rows_of(self, names: Iterable[str]) -> list[tuple[str, list[list[Any]]]]:
        """The rows of those of ``names`` still cached."""
        with self._lock:
            return [(name, self._rows(name)) for name in names if name in self._names]

    def _rows(self, name: str) -> list[list[Any]]:
        return [[e.ip, e.ttl, e.learned, e.expires] for e in self._names.get(name, {}).values()]

    def dumps(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": 1,
                "names": {
                    name: [[e.ip, e.ttl, e.learned, e.expires] for e in entries.values()]
                    for name, entries in self._names.items()
                },
            }

    def restore(self, data: dict[str, Any], now: float) -> int:
        """Load a :meth:`dumps` (entries whose TTL + grace passed are dropped). Returns entries kept.
        Names are ordered by their latest answer (the largest ``learned``: eviction takes the oldest)."""
        kept = 0
        saved = dict(data.get("names", {}))
        order = sorted(saved, key=lambda n: max((float(row[2]) for row in saved[n]), default=0.0))
        with self._lock:
            for name, rows in ((n, saved[n]) for n in order):
                entries: dict[str, CachedIP] = {}
                for ip, ttl, learned, expires in rows:
                    if float(expires) + self.config.grace > now and usable(str(ip)):
                        entries[str(ip)] = CachedIP(str(ip), int(ttl), float(learned), float(expires))
                        self._earliest = min(self._earliest, float(expires))
                if entries:
                    self._names[str(name)] = entries
                    for ip in entries:
                        self._ips.setdefault(ip, set()).add(str(name))
                    kept += len(entries)
                    self._total += len(entries)
            self.version += 1
        return kept

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """The whole cache as one snapshot, encoded in one go (tests and tools; the agent writes
        journals through :class:`l7.fqdn_state.StateStore`, proportional to the change)."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({**self.dumps(), **(extra or {})}, sort_keys=True))
        tmp.replace(path)

    def load(self, path: Path, now: float) -> int:
        """Restore the snapshot at ``path`` with its journals replayed (:func:`l7.fqdn_state.read_state`)."""
        data = read_state(path)
        return self.restore(data, now) if data is not None else 0


def state_path(state_dir: Path, node: str) -> Path:
    return snapshot_path(state_dir, node)
