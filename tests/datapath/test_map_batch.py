"""Batched map reads (bpf.batch) give what key-by-key iteration gives, on maps created for the test
(no compile): a hash map and an LPM trie of the datapath's layouts, larger than one batch."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
from collections.abc import Iterator

import pytest

from bpf import batch
from bpf.adopt import FdMap, _libbpf
from bpf.maps import MAP_SPECS, EndpointValue, IpcacheValue, ipcache_key, ipcache_prefix
from tests.datapath.conftest import require_root

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1


class _CreateOpts(ctypes.Structure):
    """The head of libbpf's ``struct bpf_map_create_opts`` (up to ``map_flags``)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    )


@contextlib.contextmanager
def _map(kind: int, key_size: int, value_size: int, max_entries: int, flags: int = 0) -> Iterator[int]:
    require_root()
    lib = _libbpf().c
    opts = _CreateOpts(sz=ctypes.sizeof(_CreateOpts), map_flags=flags)
    fd = int(
        lib.bpf_map_create(kind, b"l7g_test_batch", key_size, value_size, max_entries, ctypes.addressof(opts))
    )
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        yield fd
    finally:
        os.close(fd)


def _put(fd: int, key: bytes, value: bytes) -> None:
    assert _libbpf().c.bpf_map_update_elem(fd, key, value, 0) == 0, os.strerror(ctypes.get_errno())


@pytest.mark.parametrize("size", [0, 1, 5000])
def test_hash_batches_equal_iteration(size: int) -> None:
    with _map(BPF_MAP_TYPE_HASH, 4, ctypes.sizeof(EndpointValue), 8192) as fd:
        want = {}
        for i in range(size):
            key = (i * 7 + 3).to_bytes(4, "little")
            value = bytes(EndpointValue(endpoint_id=i + 1, identity=1000 + i, flags=i % 8, ifindex=i))
            _put(fd, key, value)
            want[key] = value
        for size_of_batch in (64, batch.BATCH):  # many batches, and one
            got = batch.lookup_batch(fd, 4, ctypes.sizeof(EndpointValue), size_of_batch)
            assert len(got) == size  # no entry twice
            assert dict(got) == want
        assert sorted(batch.iterate(fd, 4, ctypes.sizeof(EndpointValue))) == sorted(want.items())
        spec = next(s for s in MAP_SPECS if s.name == "l7g_endpoint_ids")
        handle = FdMap(os.dup(fd), spec)
        try:
            assert dict(handle.items()) == want
        finally:
            os.close(handle.fd)


def test_lpm_trie_batches_equal_iteration() -> None:
    """The ipcache's layout: host prefixes of both families and shorter prefixes over them."""
    spec = next(s for s in MAP_SPECS if s.name == "l7g_ipcache")
    ksize, vsize = ctypes.sizeof(spec.key), ctypes.sizeof(spec.value)
    nets = [ipaddress.ip_network(f"10.{i // 250}.{i % 250}.1/32") for i in range(3000)]
    nets += [ipaddress.ip_network(f"fd00::{i:x}/128") for i in range(1500)]
    nets += [ipaddress.ip_network(f"10.{i}.0.0/16") for i in range(12)]
    nets += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("fd00::/64")]
    with _map(BPF_MAP_TYPE_LPM_TRIE, ksize, vsize, 8192, BPF_F_NO_PREALLOC) as fd:
        want = {}
        for i, net in enumerate(nets):
            value = IpcacheValue(identity=100 + i, endpoint_id=i % 3, flags=0)
            _put(fd, bytes(ipcache_key(net)), bytes(value))
            want[net] = (value.identity, value.endpoint_id)

        def decoded(items: list[tuple[bytes, bytes]]) -> dict[object, tuple[int, int]]:
            out = {}
            for k, v in items:
                value = IpcacheValue.from_buffer_copy(v)
                net = ipcache_prefix(k)  # from the bytes, as the datapath decodes them
                assert net == ipcache_prefix(spec.key.from_buffer_copy(k))
                out[net] = (value.identity, value.endpoint_id)
            return out

        batched = batch.lookup_batch(fd, ksize, vsize, 1000)
        assert len(batched) == len(nets)
        assert decoded(batched) == want
        assert sorted(batched) == sorted(batch.iterate(fd, ksize, vsize))
        assert sorted(batch.items(fd, ksize, vsize)) == sorted(batched)
