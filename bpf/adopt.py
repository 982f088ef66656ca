"""Adopt the programs a previous agent attached, without compiling: the restart fast path.

::

    full path (Datapath.open):  forget ─► loader.load (bcc compile) ─► attach ─► record
                                                                                   │
    <pin_dir>/prog_l7g_{from,to}_{lxc,uplink}   the four programs, pinned ◄────────┤
    <pin_dir>/build                             array map: the build id (last) ◄───┘
                                       │
    next open: adopt ─► build id equal to loader.build_id(...)? pins there? the programs use the
                        pinned maps (by map id)? ─► yes: PinnedPrograms (libbpf by fd, no bcc)
                                                    no: the full path, as on a first start

The build id (:func:`bpf.loader.build_id`) covers the assembled source and every define, map sizes
included, so a changed program or size never adopts. :func:`record` is called only after a successful
attach and writes the build id last; :func:`forget` removes it before a compile, so a start that dies
half-way leaves nothing adoptable. Maps and the event ring buffer are the programs' own (found through
the programs' map ids), read and written through plain file descriptors.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bpf import batch, loader
from bpf.errors import DatapathError, IncompatibleMapError, MapWriteError
from bpf.maps import MAP_SPECS, MapSizes, MapSpec

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27
BPF_ANY = 0
_BUILD_SIZE = 32  # sha256
_MAX_MAP_IDS = 64

_SampleFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class _ProgInfo(ctypes.Structure):
    """The head of ``struct bpf_prog_info`` (up to ``name``)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    )


class _Lib:
    """libbpf's syscall wrappers with their types (through libbcc_bpf, as :mod:`bpf.pinned`)."""

    def __init__(self) -> None:
        lib = loader._libbpf()
        lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
        lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
        lib.bpf_map_create.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint32,
            ctypes.c_uint32,
            ctypes.c_uint32,
            ctypes.c_void_p,
        ]
        for name in ("bpf_map_lookup_elem", "bpf_map_get_next_key"):
            getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
        lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        lib.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
        lib.ring_buffer__new.argtypes = [ctypes.c_int, _SampleFn, ctypes.c_void_p, ctypes.c_void_p]
        lib.ring_buffer__new.restype = ctypes.c_void_p
        lib.ring_buffer__poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.ring_buffer__free.argtypes = [ctypes.c_void_p]
        self.c = lib

    def obj_get(self, path: Path) -> int | None:
        fd = int(self.c.bpf_obj_get(str(path).encode()))
        return fd if fd >= 0 else None


@functools.cache
def _libbpf() -> _Lib:
    return _Lib()


def _errno(rc: int) -> str:
    return os.strerror(ctypes.get_errno() or -rc)


class FdMap:
    """One map through its file descriptor: the :class:`bpf.loader.MapHandle` interface without bcc."""

    def __init__(self, fd: int, spec: MapSpec) -> None:
        self.fd = fd
        self._spec = spec
        self._ksize = ctypes.sizeof(spec.key)
        self._vsize = ctypes.sizeof(spec.value)
        self._c = _libbpf().c

    def get(self, key: ctypes._CData | bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self._vsize)
        if self._c.bpf_map_lookup_elem(self.fd, bytes(key), value) != 0:
            return None
        return value.raw

    def put(self, key: ctypes._CData | bytes, value: ctypes._CData | bytes) -> None:
        rc = self._c.bpf_map_update_elem(self.fd, bytes(key), bytes(value), BPF_ANY)
        if rc != 0:
            raise MapWriteError(f"map {self._spec.name!r}: Could not update table: {_errno(rc)}")

    def delete(self, key: ctypes._CData | bytes) -> bool:
        return bool(self._c.bpf_map_delete_elem(self.fd, bytes(key)) == 0)

    def _keys(self) -> list[bytes]:
        out: list[bytes] = []
        following = ctypes.create_string_buffer(self._ksize)
        previous: bytes | None = None
        while self._c.bpf_map_get_next_key(self.fd, previous, following) == 0:
            previous = following.raw
            out.append(previous)
        return out

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry, read in batches where the kernel can (:mod:`bpf.batch`)."""
        return iter(batch.items(self.fd, self._ksize, self._vsize))

    def clear(self) -> None:
        for key in self._keys():
            self.delete(key)

    @property
    def key_type(self) -> type[ctypes._CData]:
        return self._spec.key

    @property
    def value_type(self) -> type[ctypes._CData]:
        return self._spec.value


class PinnedPrograms:
    """Programs adopted from their pins: the :class:`bpf.loader.LoadedPrograms` interface."""

    def __init__(self, fds: dict[str, int], maps: dict[str, FdMap], events_fd: int, build: bytes) -> None:
        self.fds = fds
        self.build = build
        self._maps = maps
        self._events_fd = events_fd
        self._ring: int | None = None
        self._callback: Any = None  # the ctypes callback, kept alive while the ring buffer is

    def map(self, name: str) -> FdMap:
        return self._maps[name]

    def open_events(self, callback: Callable[[bytes], None]) -> None:
        def _cb(_ctx: Any, data: Any, size: int) -> int:
            callback(ctypes.string_at(data, size))
            return 0

        self._callback = _SampleFn(_cb)
        ring = _libbpf().c.ring_buffer__new(self._events_fd, self._callback, None, None)
        if not ring:
            raise DatapathError(f"cannot open the event ring buffer: {_errno(0)}")
        self._ring = int(ring)

    def poll_events(self, timeout_ms: int) -> None:
        if self._ring is not None:
            _libbpf().c.ring_buffer__poll(self._ring, timeout_ms)

    def event_fields(self) -> list[tuple[str, str]]:
        raise DatapathError("the event layout is known only to a compile (bpf.loader.load)")

    def close(self) -> None:
        if self._ring is not None:
            _libbpf().c.ring_buffer__free(self._ring)
            self._ring = None
        for fd in {*self.fds.values(), *(m.fd for m in self._maps.values()), self._events_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds, self._maps = {}, {}


class NotAdoptable(DatapathError):
    """What a previous agent left cannot be adopted as is (the reason); the caller compiles."""


def _read_build(lib: _Lib, pin_dir: Path) -> bytes:
    fd = lib.obj_get(pin_dir / loader.BUILD_PIN)
    if fd is None:
        raise NotAdoptable("no build id pinned")
    try:
        value = ctypes.create_string_buffer(_BUILD_SIZE)
        if lib.c.bpf_map_lookup_elem(fd, bytes(4), value) != 0:
            raise NotAdoptable("the build id cannot be read")
        return value.raw
    finally:
        os.close(fd)


def _map_ids(lib: _Lib, prog_fd: int) -> list[int]:
    ids = (ctypes.c_uint32 * _MAX_MAP_IDS)()
    info = _ProgInfo(nr_map_ids=_MAX_MAP_IDS, map_ids=ctypes.addressof(ids))
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if lib.c.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise NotAdoptable(f"cannot read the info of a pinned program: {_errno(0)}")
    return list(ids[: min(info.nr_map_ids, _MAX_MAP_IDS)])


def _map_info(lib: _Lib, fd: int) -> loader._MapInfo:
    info = loader._MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if lib.c.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise NotAdoptable(f"cannot read the info of a map: {_errno(0)}")
    return info


def adopt(pin_dir: Path, sizes: MapSizes, build: bytes) -> PinnedPrograms:
    """The programs pinned in ``pin_dir`` and their maps, when they are of build ``build`` (raises
    :class:`NotAdoptable` otherwise; :class:`IncompatibleMapError` for a map of another shape)."""
    lib = _libbpf()
    if _read_build(lib, pin_dir) != build:
        raise NotAdoptable("the pinned programs were built from another source or other defines")
    loader.check_pins(pin_dir, sizes)
    fds: dict[str, int] = {}
    maps: dict[str, FdMap] = {}
    events_fd = -1
    try:
        for spec in MAP_SPECS:
            fd = lib.obj_get(pin_dir / spec.pin_name)
            if fd is None:
                raise NotAdoptable(f"map {spec.pin_name} is not pinned")
            maps[spec.name] = FdMap(fd, spec)
        for name in loader.PROGRAMS:
            fd = lib.obj_get(loader.program_pin(pin_dir, name))
            if fd is None:
                raise NotAdoptable(f"program {name} is not pinned")
            fds[name] = fd
        pinned = {_map_info(lib, m.fd).id: name for name, m in maps.items()}
        ours = {name[:15].encode() for name in pinned.values()}  # kernel names keep 15 characters
        used: set[int] = set()
        for fd in fds.values():
            used.update(_map_ids(lib, fd))
        for map_id in sorted(used):
            fd = int(lib.c.bpf_map_get_fd_by_id(map_id))
            if fd < 0:
                raise NotAdoptable(f"map id {map_id} of a pinned program is gone")
            info = _map_info(lib, fd)
            if info.type == BPF_MAP_TYPE_RINGBUF and events_fd < 0:
                events_fd = fd
                continue
            os.close(fd)
            if info.name in ours and map_id not in pinned:
                raise NotAdoptable(
                    f"the pinned programs use another {info.name.decode()} than the pinned one"
                )
        if events_fd < 0:
            raise NotAdoptable("the pinned programs have no event ring buffer")
    except (NotAdoptable, IncompatibleMapError):
        for fd in [*fds.values(), *(m.fd for m in maps.values()), events_fd]:
            if fd >= 0:
                os.close(fd)
        raise
    return PinnedPrograms(fds, maps, events_fd, build)


def forget(pin_dir: Path) -> None:
    """Make ``pin_dir`` not adoptable (before a compile replaces its programs)."""
    with contextlib.suppress(FileNotFoundError):
        (pin_dir / loader.BUILD_PIN).unlink()


def record(pin_dir: Path, fds: dict[str, int], build: bytes) -> None:
    """Pin the attached programs and then their build id, so that the next open adopts them."""
    lib = _libbpf()
    forget(pin_dir)
    for name, fd in fds.items():
        path = loader.program_pin(pin_dir, name)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if lib.c.bpf_obj_pin(fd, str(path).encode()) != 0:
            raise DatapathError(f"cannot pin program {name} at {path}: {_errno(0)}")
    fd = int(lib.c.bpf_map_create(BPF_MAP_TYPE_ARRAY, b"l7g_build", 4, _BUILD_SIZE, 1, None))
    if fd < 0:
        raise DatapathError(f"cannot create the build id map: {_errno(fd)}")
    try:
        value = ctypes.create_string_buffer(build, _BUILD_SIZE)
        if lib.c.bpf_map_update_elem(fd, bytes(4), value, BPF_ANY) != 0:
            raise DatapathError(f"cannot write the build id: {_errno(0)}")
        path = pin_dir / loader.BUILD_PIN
        if lib.c.bpf_obj_pin(fd, str(path).encode()) != 0:
            raise DatapathError(f"cannot pin the build id at {path}: {_errno(0)}")
    finally:
        os.close(fd)
