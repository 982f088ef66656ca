"""The FQDN cache (l7/agent/fqdn.py): TTLs, the per-name cap, expiry with conntrack and grace, the state
file. Pure: no root, no lab."""

from __future__ import annotations

from pathlib import Path

from l7.agent.fqdn import CacheConfig, FQDNCache, usable


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
