"""Read-only access to a node's pinned maps: what the datapath enforces now, without compiling or
attaching anything (``l7gate bpf policy get``).

::

    /sys/fs/bpf/l7gate/<datapath>/{endpoint_ids,ipcache,policy}
        ──► bpf_obj_get (BPF_F_RDONLY) ──► batched lookup (bpf.batch) ──► maps.py layouts ──► PinnedState

Each map is opened with a read-only file descriptor, and its key and value sizes are checked against
:mod:`bpf.maps` before anything is decoded. A map written while it is read may show a mix of old and
new entries (the kernel's iteration is not a snapshot); the agent writes new entries before deleting
stale ones, so a reader never sees less than one of the two states allows.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from bpf import batch
from bpf.datapath import PIN_ROOT, _decode_policy_key
from bpf.errors import DatapathError
from bpf.loader import _libbpf, pinned_map_info
from bpf.maps import (
    MAP_SPECS,
    Action,
    EndpointValue,
    IpcacheValue,
    IPNetwork,
    MapSpec,
    PolicyValue,
    ipcache_prefix,
)
from bpf.policy_entries import PolicyEntryKey, PolicyEntryValue

BPF_F_RDONLY = 1 << 3


class PinnedMapError(DatapathError):
    """A pinned map is missing, cannot be opened or has another layout than this version reads."""


class _ObjGetOpts(ctypes.Structure):
    """``struct bpf_obj_get_opts`` of libbpf 1.x."""

    _fields_ = (("sz", ctypes.c_size_t), ("file_flags", ctypes.c_uint32))


@dataclass(frozen=True)
class PinnedState:
    """The entries of one node's endpoint, ipcache and policy maps."""

    endpoints: dict[int, EndpointValue] = field(default_factory=dict)  # by endpoint id
    ipcache: dict[IPNetwork, IpcacheValue] = field(default_factory=dict)
    policy: dict[int, dict[PolicyEntryKey, PolicyEntryValue]] = field(default_factory=dict)

    def endpoint_id(self, ip: str) -> int | None:
        """The local endpoint id the ipcache gives the address ``ip`` (its host prefix), or None."""
        address = ipaddress.ip_address(ip)
        value = self.ipcache.get(ipaddress.ip_network(address))
        return value.endpoint_id if value is not None and value.endpoint_id else None


def pin_dir(datapath: str) -> Path:
    """The pin directory of the datapath named ``datapath`` (the agent status file's ``datapath``)."""
    if not datapath or "/" in datapath or datapath.startswith("."):
        raise PinnedMapError(f"bad datapath name {datapath!r}")
    return PIN_ROOT / datapath


def _spec(name: str) -> MapSpec:
    return next(spec for spec in MAP_SPECS if spec.name == name)


def _open(path: Path, spec: MapSpec) -> int:
    if not path.exists():
        raise PinnedMapError(f"no pinned map {path} (is the agent running on this machine?)")
    _, key_size, value_size, _ = pinned_map_info(path)
    want = (ctypes.sizeof(spec.key), ctypes.sizeof(spec.value))
    if (key_size, value_size) != want:
        raise PinnedMapError(
            f"pinned map {path} has key/value sizes {(key_size, value_size)}, this version reads {want}"
        )
    lib = _libbpf()
    lib.bpf_obj_get_opts.argtypes = [ctypes.c_char_p, ctypes.POINTER(_ObjGetOpts)]
    opts = _ObjGetOpts(sz=ctypes.sizeof(_ObjGetOpts), file_flags=BPF_F_RDONLY)
    fd = int(lib.bpf_obj_get_opts(str(path).encode(), ctypes.byref(opts)))
    if fd < 0:
        raise PinnedMapError(f"cannot open pinned map {path}: {os.strerror(ctypes.get_errno() or -fd)}")
    return fd


def _items(path: Path, spec: MapSpec) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a pinned map, read through a read-only descriptor (in batches where the
    kernel can)."""
    fd = _open(path, spec)
    try:
        return batch.items(fd, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value))
    finally:
        os.close(fd)


def read_state(datapath: str) -> PinnedState:
    """The endpoint, ipcache and policy entries of the datapath named ``datapath``."""
    root = pin_dir(datapath)
    if not root.is_dir():
        raise PinnedMapError(f"no pinned maps in {root} (is the agent running on this machine?)")
    endpoints_spec, ipcache_spec, policy_spec = (
        _spec("l7g_endpoint_ids"),
        _spec("l7g_ipcache"),
        _spec("l7g_policy"),
    )
    endpoints = {
        int.from_bytes(k, "little"): EndpointValue.from_buffer_copy(v)
        for k, v in _items(root / endpoints_spec.pin_name, endpoints_spec)
    }
    ipcache = {
        ipcache_prefix(k): IpcacheValue.from_buffer_copy(v)
        for k, v in _items(root / ipcache_spec.pin_name, ipcache_spec)
    }
    policy: dict[int, dict[PolicyEntryKey, PolicyEntryValue]] = {}
    for k, v in _items(root / policy_spec.pin_name, policy_spec):
        endpoint_id, entry = _decode_policy_key(k)
        raw = PolicyValue.from_buffer_copy(v)
        policy.setdefault(endpoint_id, {})[entry] = PolicyEntryValue(Action(raw.action), raw.proxy_port)
    return PinnedState(endpoints, ipcache, policy)
