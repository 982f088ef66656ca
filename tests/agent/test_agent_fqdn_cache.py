"""The FQDN cache (l7/agent/fqdn.py): TTLs, the per-name cap, expiry with conntrack and grace, the state
file. Pure: no root, no lab."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from l7.agent.fqdn import CacheConfig, FQDNCache, usable
from l7.fqdn_state import Record, StateStore, journal_path, journals, read_state


def test_ttl_minimum_and_learned() -> None:
    cache = FQDNCache(CacheConfig(min_ttl=30))
    assert cache.add("a.test", [("192.0.2.1", 5), ("2001:db8::1", 60)], now=100.0) == [
        "192.0.2.1",
        "2001:db8::1",
    ]
    entries = {e.ip: e for e in cache.entries()["a.test"]}
    assert entries["192.0.2.1"].ttl == 30 and entries["192.0.2.1"].expires == 130.0
    assert entries["2001:db8::1"].expires == 160.0
    cache.add("b.test", [("192.0.2.1", 300)], now=101.0)
    assert cache.learned() == {"192.0.2.1": ["a.test", "b.test"], "2001:db8::1": ["a.test"]}
    assert cache.add("a.test", [("192.0.2.1", 1)], now=102.0) == []  # not new; expiry never shortened
    assert {e.ip: e.expires for e in cache.entries()["a.test"]}["192.0.2.1"] == 132.0


def test_cap_evicts_the_oldest() -> None:
    cache = FQDNCache(CacheConfig(max_ips=2))
    cache.add("a.test", [("192.0.2.1", 60), ("192.0.2.2", 60)], now=0.0)
    cache.add("a.test", [("192.0.2.1", 60)], now=1.0)  # refreshed: now the newest
    cache.add("a.test", [("192.0.2.3", 60)], now=2.0)
    assert [e.ip for e in cache.entries()["a.test"]] == ["192.0.2.1", "192.0.2.3"]


def test_expiry_waits_for_connections_until_grace() -> None:
    cache = FQDNCache(CacheConfig(grace=10))
    cache.add("a.test", [("192.0.2.1", 5), ("192.0.2.2", 5), ("192.0.2.3", 50)], now=0.0)
    in_use = {"192.0.2.2"}
    assert cache.expire(4.0, in_use.__contains__) == []
    assert cache.expire(6.0, in_use.__contains__) == [("a.test", "192.0.2.1")]  # unused: at the TTL
    assert cache.expire(14.0, in_use.__contains__) == []  # used: kept within the grace period
    assert cache.expire(15.0, in_use.__contains__) == [("a.test", "192.0.2.2")]  # TTL + grace: removed
    assert cache.next_expiry() == 50.0
    assert cache.expire(51.0, lambda _ip: False) == [("a.test", "192.0.2.3")]
    assert cache.entries() == {} and cache.next_expiry() is None


def test_state_file_round_trip(tmp_path: Path) -> None:
    cache = FQDNCache(CacheConfig(grace=5))
    cache.add("a.test", [("192.0.2.1", 60)], now=1000.0)
    cache.add("old.test", [("192.0.2.9", 10)], now=900.0)
    path = tmp_path / "fqdn-cache-n1.json"
    cache.save(path, {"selectors": {"a.test": ["a.test"]}})
    restored = FQDNCache(CacheConfig(grace=5))
    assert restored.load(path, now=1010.0) == 1  # old.test expired long ago (TTL + grace)
    assert restored.learned() == {"192.0.2.1": ["a.test"]}
    assert restored.entries()["a.test"][0].expires == 1060.0
    assert FQDNCache().load(tmp_path / "missing.json", now=0.0) == 0


def test_usable_addresses() -> None:
    assert usable("192.0.2.1") and usable("2001:db8::1")
    for ip in ("127.0.0.1", "::1", "169.254.1.1", "fe80::1", "224.0.0.1", "0.0.0.0", "::", "nonsense"):
        assert not usable(ip), ip


def test_a_flood_of_fresh_names_keeps_the_cache_bounded() -> None:
    """Random names under a wildcard, each answered with fresh IPs: the cache never holds more than
    ``max_total`` entries; the names answered longest ago go first, and their IPs lose every name (so
    the agent takes their FQDN identity away: fail closed, never open)."""
    cache = FQDNCache(CacheConfig(max_total=100))
    cache.add("keep.flood.test", [("192.0.2.1", 60)], now=0.0)
    evicted: list[str] = []
    for i in range(1000):
        ips = [(f"10.{i // 250}.{i % 250}.{j}", 60) for j in (1, 2)]
        cache.add(f"r{i}.flood.test", ips, now=float(i))
        if i % 10 == 0:
            cache.add("keep.flood.test", [("192.0.2.1", 60)], now=float(i))  # answered again: kept
        assert len(cache) <= 100
        evicted += cache.take_evicted()
    assert len(cache) == 99 and cache.names_count() == 50  # keep + 49 names of 2 IPs
    assert cache.names_of("192.0.2.1") == ("keep.flood.test",)
    assert cache.names_of("10.3.249.2") == ("r999.flood.test",)
    assert len(evicted) == 2001 - 99 and all(cache.names_of(ip) is None for ip in evicted)
    assert len(cache.learned()) == 99


def test_refresh_only_when_every_address_is_credited_and_written() -> None:
    """The answer hook's lock-free path: an answer whose addresses are all credited to the name *and*
    written to the ipcache only refreshes them; anything new, unwritten or expired takes the full path."""
    cache = FQDNCache(CacheConfig(grace=0))
    one, two = ("192.0.2.1", 60), ("192.0.2.2", 60)
    assert not cache.refresh("a.test", (one,), now=0.0)  # unknown name: nothing changed
    assert cache.entries() == {}
    assert cache.add("a.test", [one], now=0.0) == ["192.0.2.1"]
    assert cache.unwritten("a.test") == ["192.0.2.1"]
    assert not cache.refresh("a.test", (one,), now=1.0)  # credited, not written yet
    cache.written("a.test", ["192.0.2.1"])
    assert cache.unwritten("a.test") == []
    assert cache.refresh("a.test", (one,), now=10.0)
    assert [(e.ip, e.learned, e.expires) for e in cache.entries()["a.test"]] == [("192.0.2.1", 10.0, 70.0)]
    assert not cache.refresh("a.test", (one, two), now=11.0)  # a new address: the full path
    assert [e.ip for e in cache.entries()["a.test"]] == ["192.0.2.1"]
    assert not cache.refresh("b.test", (one,), now=11.0)  # written for another name only
    assert cache.expire(71.0, lambda _ip: False) == [("a.test", "192.0.2.1")]
    assert not cache.refresh("a.test", (one,), now=72.0)  # expired: learned (and written) again
    assert cache.add("a.test", [one], now=72.0) == ["192.0.2.1"]
    assert cache.unwritten("a.test") == ["192.0.2.1"]


# -- the state on disk: snapshot + journals (l7.fqdn_state) ----------------------------------------------
def _no_selectors(rows: list[tuple[str, list[list[Any]]]]) -> list[Record]:
    return [(name, entries, []) for name, entries in rows]


def _flush(cache: FQDNCache, store: StateStore) -> int:
    return store.flush(lambda limit: _no_selectors(cache.take_changed(limit)))


def _restored(snapshot: Path, now: float) -> FQDNCache:
    restored = FQDNCache(CacheConfig(grace=5, max_ips=3))
    assert restored.load(snapshot, now) > 0
    return restored


def _busy_cache() -> FQDNCache:
    cache = FQDNCache(CacheConfig(grace=5, max_ips=3))
    for i in range(300):
        cache.add(f"h{i}.test", [(f"192.0.2.{i % 250 + 1}", 60), (f"2001:db8::{i:x}", 600)], now=1000.0 + i)
    return cache


def test_journal_and_snapshot_restore_the_cache(tmp_path: Path) -> None:
    """Changes journaled in slices (answers, refreshed TTLs, the per-name cap, expiry), a compaction
    between them: the snapshot with its journals replayed is the cache."""
    snapshot = tmp_path / "fqdn-cache-n1.json"
    store = StateStore(snapshot, slice_names=64, pause=0.0)
    assert store.load() is None
    assert json.loads(snapshot.read_text())["names"] == {}  # readers find the node by its snapshot
    cache = _busy_cache()
    assert _flush(cache, store) == 300  # 300 changed names, 5 slices
    assert _flush(cache, store) == 0  # nothing changed since
    store.compact(cache.names(), lambda names: _no_selectors(cache.rows_of(names)))
    cache.add("h1.test", [("198.51.100.1", 30), ("198.51.100.2", 30)], now=1400.0)  # cap: oldest out
    cache.add("h2.test", [("192.0.2.3", 900)], now=1401.0)  # refreshed: later expiry, newest name
    assert cache.expire(1500.0, lambda _ip: False)  # the v4 addresses of the first names expire
    assert _flush(cache, store) > 0
    restored = _restored(snapshot, now=1500.0)
    assert restored.entries() == cache.entries()
    assert restored.learned() == cache.learned()
    # ordered by each name's latest answer still cached (eviction takes the oldest first)
    assert restored.names()[0] == "h0.test" and restored.names()[-1] == "h2.test"


def test_a_torn_last_line_is_ignored_and_never_appended_to(tmp_path: Path) -> None:
    snapshot = tmp_path / "fqdn-cache-n1.json"
    store = StateStore(snapshot, pause=0.0)
    store.load()
    cache = FQDNCache(CacheConfig(grace=5, max_ips=3))
    cache.add("a.test", [("192.0.2.1", 60)], now=1000.0)
    _flush(cache, store)
    with journal_path(snapshot, store.seq).open("a") as fh:  # a crash in the middle of a write
        fh.write('["b.test",[["192.0.2.2",60,1000.0,10')
    state = read_state(snapshot)
    assert state is not None and list(state["names"]) == ["a.test"]
    restarted = StateStore(snapshot, pause=0.0)
    assert restarted.load() == state
    assert restarted.seq == store.seq + 1  # a new journal: nothing glued to the torn line
    cache.add("c.test", [("192.0.2.3", 60)], now=1001.0)
    _flush(cache, restarted)
    assert _restored(snapshot, now=1002.0).entries() == cache.entries()


def test_compaction_keeps_the_content_and_drops_the_journals_it_covers(tmp_path: Path) -> None:
    """Answers keep arriving while the snapshot is written slice by slice: they land in the new
    journal, and the snapshot with it is the cache; the journals before it are deleted."""
    snapshot = tmp_path / "fqdn-cache-n1.json"
    store = StateStore(snapshot, slice_names=50, pause=0.0)
    store.load()
    cache = _busy_cache()
    _flush(cache, store)
    old = journals(snapshot)
    assert len(old) == 1

    def rows_of(names: list[str]) -> list[Record]:  # the proxy answers between two slices
        cache.add(f"late-{names[0]}", [("203.0.113.7", 60)], now=1500.0)
        cache.add(names[-1], [("203.0.113.8", 60)], now=1500.0)
        return _no_selectors(cache.rows_of(names))

    store.compact(cache.names(), rows_of)
    assert [seq for seq, _ in journals(snapshot)] == [] and old[0][1].exists() is False
    _flush(cache, store)
    assert [seq for seq, _ in journals(snapshot)] == [store.seq]
    data = json.loads(snapshot.read_text())
    assert data["journal"] == store.seq and len(data["names"]) == 300
    assert set(data["selectors"]) == set(data["names"])
    assert _restored(snapshot, now=1000.0).entries() == cache.entries()  # (nothing past TTL + grace)
    assert store.needs_compaction() is False  # small journals: the snapshot is not rewritten
