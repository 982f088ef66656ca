"""Read a whole map through its file descriptor: in batches when the kernel can, else key by key.

::

    fd ─► BPF_MAP_LOOKUP_BATCH (libbpf bpf_map_lookup_batch, up to BATCH entries a call)
            │ ok: keys and values of the batch, a resume token ─► next call ... ─► ENOENT: the end
            └ refused (EINVAL, EOPNOTSUPP, ENOTSUPP: a kernel or map type without it) ─► iterate:
              get_next_key ─► lookup_elem per key

One system call per batch instead of two per entry: 55,000 ipcache entries read back at a restart in
~14 calls. Same entries either way; neither is a snapshot (a map written meanwhile may show a mix of
old and new entries, as iteration does). A hash bucket holding more entries than one batch makes the
kernel answer ENOSPC: the batch is doubled and the call repeated.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

from bpf import loader
from bpf.errors import DatapathError

BATCH = 4096
_NOT_SUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, 524}  # 524: the kernel's ENOTSUPP
_MAX_BATCH = 1 << 20


class _BatchOpts(ctypes.Structure):
    """``struct bpf_map_batch_opts`` of libbpf."""

    _fields_ = (("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64))


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = loader._libbpf()
    lib.bpf_map_lookup_batch.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.POINTER(_BatchOpts),
    ]
    for name in ("bpf_map_lookup_elem", "bpf_map_get_next_key"):
        getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _errno(rc: int) -> int:
    return ctypes.get_errno() or -rc


class BatchUnsupported(DatapathError):
    """The kernel has no batched lookup for this map (callers iterate)."""


def lookup_batch(fd: int, key_size: int, value_size: int, batch: int = BATCH) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the map ``fd`` through BPF_MAP_LOOKUP_BATCH, ``batch`` entries a call.
    Raises :class:`BatchUnsupported` when the kernel refuses the command before any entry was read."""
    lib = _lib()
    opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts))
    token_size = max(key_size, 8)  # hash maps resume from a u32 bucket, the others from a key
    token_in = ctypes.create_string_buffer(token_size)
    token_out = ctypes.create_string_buffer(token_size)
    out: list[tuple[bytes, bytes]] = []
    first = True
    while True:
        keys = ctypes.create_string_buffer(key_size * batch)
        values = ctypes.create_string_buffer(value_size * batch)
        count = ctypes.c_uint32(batch)
        rc = lib.bpf_map_lookup_batch(
            fd, None if first else token_in, token_out, keys, values, ctypes.byref(count), ctypes.byref(opts)
        )
        err = _errno(rc) if rc != 0 else 0
        if err == errno.ENOSPC and count.value == 0 and batch < _MAX_BATCH:
            batch *= 2  # one hash bucket holds more entries than a batch
            continue
        if err and err != errno.ENOENT:
            if first and err in _NOT_SUPPORTED:
                raise BatchUnsupported(f"batched lookup refused: {os.strerror(err)}")
            raise DatapathError(f"batched map lookup failed: {os.strerror(err)}")
        n = count.value
        kraw, vraw = keys.raw, values.raw
        out.extend(
            (kraw[i * key_size : (i + 1) * key_size], vraw[i * value_size : (i + 1) * value_size])
            for i in range(n)
        )
        if err == errno.ENOENT:  # the end (the last entries, if any, came with it)
            return out
        ctypes.memmove(token_in, token_out, token_size)
        first = False


def iterate(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the map ``fd``, one get_next_key and one lookup per entry (an entry
    deleted in between is skipped)."""
    lib = _lib()
    following = ctypes.create_string_buffer(key_size)
    value = ctypes.create_string_buffer(value_size)
    keys: list[bytes] = []
    previous: bytes | None = None
    while lib.bpf_map_get_next_key(fd, previous, following) == 0:
        previous = following.raw
        keys.append(previous)
    out: list[tuple[bytes, bytes]] = []
    for key in keys:
        if lib.bpf_map_lookup_elem(fd, key, value) == 0:
            out.append((key, value.raw))
    return out


def items(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the map ``fd``: batched, or iterated where the kernel lacks batches."""
    try:
        return lookup_batch(fd, key_size, value_size)
    except BatchUnsupported:
        return iterate(fd, key_size, value_size)
