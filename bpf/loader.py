"""Compile and load the tc programs with bcc; the only module that imports :mod:`bcc`.

The C sources are one entry file per hook (``from_lxc.c``, ``to_lxc.c``, ``from_uplink.c``,
``to_uplink.c``) and
shared headers in ``lib/``. bcc rewrites map accesses (``map.lookup(&k)``) only in the main source
text, so :func:`assemble_source` inlines the project's own ``#include "..."`` files (each once) and
the three entry files become one compilation unit: one compile (~2 s) for all hooks, and the maps
are shared. Maps are pinned by ``BPF_TABLE_PINNED`` under ``pin_dir``; bcc reuses an existing pin
without checking its shape, so :func:`check_pins` does that first.

:func:`build_id` names what a compile would produce (the assembled source, the defines and this
loader's format): :mod:`bpf.adopt` keeps it beside the pins once the programs are attached, and the
next :meth:`~bpf.datapath.Datapath.open` with the same id adopts them without compiling (nor
importing bcc, whose LLVM is most of a compile's cost).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf.errors import CompileError, DatapathError, IncompatibleMapError, MapWriteError
from bpf.maps import MAP_SPECS, PROXY_PORTS_MAX, MapSizes, MapSpec

__all__ = [
    "IncompatibleMapError",
    "LoadedPrograms",
    "MapHandle",
    "build_id",
    "check_pins",
    "load",
    "stats",
    "unpin",
]

SRC_DIR = Path(__file__).resolve().parent
ENTRY_FILES = ("from_lxc.c", "to_lxc.c", "from_uplink.c", "to_uplink.c")
PROG_FROM_LXC = "l7g_from_lxc"
PROG_TO_LXC = "l7g_to_lxc"
PROG_FROM_UPLINK = "l7g_from_uplink"
PROG_TO_UPLINK = "l7g_to_uplink"
PROGRAMS = (PROG_FROM_LXC, PROG_TO_LXC, PROG_FROM_UPLINK, PROG_TO_UPLINK)
EVENTS_MAP = "l7g_events"

LOADER_FORMAT = 1  # bump when what a build id covers changes (program or pin naming, defines)
BUILD_PIN = "build"  # pinned map holding the build id of the pinned programs (bpf.adopt)
PROG_PIN_PREFIX = "prog_"  # the programs are pinned as <pin_dir>/prog_<program name>


def program_pin(pin_dir: Path, name: str) -> Path:
    return pin_dir / f"{PROG_PIN_PREFIX}{name}"


@dataclass
class LoaderStats:
    """What this process's loader did (the adopt tests check that nothing was compiled)."""

    compiles: int = 0


stats = LoaderStats()

_INCLUDE = re.compile(r'^#include "([^"]+)"[ \t]*$', re.MULTILINE)
_MAP_TYPES = {"hash": 1, "array": 2, "lru_hash": 9, "lpm_trie": 11}


def assemble_source(root: Path = SRC_DIR, entries: tuple[str, ...] = ENTRY_FILES) -> str:
    """The entry files with the project's quoted includes inlined, each header once."""
    seen: set[Path] = set()
    parts: list[str] = []

    def emit(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        text = path.read_text()
        pos = 0
        for m in _INCLUDE.finditer(text):
            parts.append(text[pos : m.start()])
            target = (path.parent / m.group(1)).resolve()
            if not target.exists():
                target = (root / m.group(1)).resolve()
            emit(target)
            pos = m.end()
        parts.append(text[pos:])

    for entry in entries:
        emit((root / entry).resolve())
    return "".join(parts)


class _MapInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("rest", ctypes.c_uint8 * 112),
    )


def _libbpf() -> ctypes.CDLL:
    return ctypes.CDLL("libbcc_bpf.so.0", use_errno=True)


def pinned_map_info(path: Path) -> tuple[int, int, int, int]:
    """(type, key size, value size, max entries) of a pinned map."""
    lib = _libbpf()
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    fd = lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        err = ctypes.get_errno()
        raise DatapathError(f"cannot open pinned map {path}: {os.strerror(err)}")
    try:
        info = _MapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        rc = lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
        if rc != 0:
            raise DatapathError(f"cannot read the info of pinned map {path}")
        return (info.type, info.key_size, info.value_size, info.max_entries)
    finally:
        os.close(fd)


def expected_shape(spec: MapSpec, sizes: MapSizes) -> tuple[int, int, int, int]:
    max_entries = {
        "l7g_endpoints": 4096,
        "l7g_endpoint_ids": 4096,
        "l7g_ipcache": sizes.ipcache,
        "l7g_policy": sizes.policy,
        "l7g_ct": sizes.ct,
        "l7g_frags": 8192,
        "l7g_config": 16,
        "l7g_devices": 4096,
        "l7g_proxy_ports": PROXY_PORTS_MAX,
    }[spec.name]
    return (_MAP_TYPES[spec.kind], ctypes.sizeof(spec.key), ctypes.sizeof(spec.value), max_entries)


def check_pins(pin_dir: Path, sizes: MapSizes) -> list[str]:
    """Names of the maps already pinned in ``pin_dir``; raises if one has an unexpected shape."""
    found = []
    for spec in MAP_SPECS:
        path = pin_dir / spec.pin_name
        if not path.exists():
            continue
        got = pinned_map_info(path)
        want = expected_shape(spec, sizes)
        if got != want:
            raise IncompatibleMapError(
                f"pinned map {path} has (type, key, value, max_entries) {got}, expected {want}; "
                "remove it (Datapath.destroy) to recreate"
            )
        found.append(spec.name)
    return found


class MapHandle:
    """Byte-level access to one map of the loaded object (layouts live in :mod:`bpf.maps`)."""

    def __init__(self, table: Any) -> None:
        self._t = table

    def _key(self, key: ctypes._CData | bytes) -> Any:
        return self._t.Key.from_buffer_copy(bytes(key))

    def get(self, key: ctypes._CData | bytes) -> bytes | None:
        try:
            return bytes(self._t[self._key(key)])
        except KeyError:
            return None

    def put(self, key: ctypes._CData | bytes, value: ctypes._CData | bytes) -> None:
        try:
            self._t[self._key(key)] = self._t.Leaf.from_buffer_copy(bytes(value))
        except Exception as exc:  # bcc raises a bare Exception ("Could not update table: ...")
            raise MapWriteError(f"map {getattr(self._t, 'name', '?')!r}: {exc}") from exc

    def delete(self, key: ctypes._CData | bytes) -> bool:
        try:
            del self._t[self._key(key)]
        except KeyError:
            return False
        return True

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry, read in batches where the kernel can (:mod:`bpf.batch`)."""
        from bpf import batch  # imports this module

        size = ctypes.sizeof
        return iter(batch.items(self._t.map_fd, size(self._t.Key), size(self._t.Leaf)))

    def clear(self) -> None:
        for key in list(self._t.keys()):
            with contextlib.suppress(KeyError):
                del self._t[key]

    @property
    def key_type(self) -> type[ctypes._CData]:
        return self._t.Key  # type: ignore[no-any-return]

    @property
    def value_type(self) -> type[ctypes._CData]:
        return self._t.Leaf  # type: ignore[no-any-return]


@dataclass
class LoadedPrograms:
    """The result of one compile: program fds by name, map handles, the event ring buffer."""

    bpf: Any
    fds: dict[str, int]
    build: bytes = b""  # build_id of this compile

    def map(self, name: str) -> MapHandle:
        return MapHandle(self.bpf[name.encode()])

    def open_events(self, callback: Callable[[bytes], None]) -> None:
        def _cb(_ctx: Any, data: Any, size: int) -> int:
            callback(ctypes.string_at(data, size))
            return 0

        self.bpf[EVENTS_MAP.encode()].open_ring_buffer(_cb)

    def poll_events(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def event_fields(self) -> list[tuple[str, str]]:
        """(name, C type) of each field of the event struct as bcc parsed it, for the layout test."""
        from bcc.libbcc import lib

        table = self.bpf[EVENTS_MAP.encode()]
        out = []
        for i in range(lib.bpf_perf_event_fields(self.bpf.module, table._name)):
            raw = lib.bpf_perf_event_field(self.bpf.module, table._name, i).decode()
            name, _, ctype = raw.partition("#")
            out.append((name, ctype))
        return out

    def close(self) -> None:
        """Release the programs and maps held by this process (attached filters keep theirs)."""
        self.bpf.cleanup()


def cflags(pin_dir: Path, sizes: MapSizes, defines: tuple[str, ...] = ()) -> list[str]:
    """The compiler flags of a build: pin directory, map sizes, then ``defines`` (``NAME=VALUE``)."""
    return [
        f'-DL7G_PIN_DIR="{pin_dir}"',
        f"-DL7G_CT_MAX={sizes.ct}",
        f"-DL7G_IPCACHE_MAX={sizes.ipcache}",
        f"-DL7G_POLICY_MAX={sizes.policy}",
        f"-DL7G_PROXY_PORTS_MAX={PROXY_PORTS_MAX}",
        *(f"-D{d}" for d in defines),
        "-Wno-unused-function",
    ]


def build_id(
    pin_dir: Path, sizes: MapSizes, defines: tuple[str, ...] = (), source: str | None = None
) -> bytes:
    """SHA-256 of what a compile depends on: this loader's format, the program names, the flags and
    the assembled source (``source``: as :func:`assemble_source` gives it)."""
    h = hashlib.sha256(f"l7gate-loader {LOADER_FORMAT}\0".encode())
    for part in (*PROGRAMS, *cflags(pin_dir, sizes, defines)):
        h.update(part.encode() + b"\0")
    h.update((assemble_source() if source is None else source).encode())
    return h.digest()


def load(pin_dir: Path, sizes: MapSizes | None = None, defines: tuple[str, ...] = ()) -> LoadedPrograms:
    """Compile the tc programs with maps pinned in ``pin_dir`` (created) and load them. ``defines``:
    more ``NAME=VALUE`` preprocessor definitions (part of the build id)."""
    from bcc import BPF  # the only bcc import of the project

    sizes = sizes or MapSizes()
    pin_dir.mkdir(parents=True, exist_ok=True)
    check_pins(pin_dir, sizes)
    source = assemble_source()
    try:
        bpf = BPF(text=source.encode(), cflags=cflags(pin_dir, sizes, defines))
    except Exception as exc:  # bcc raises bare Exception
        raise CompileError(f"compiling the tc programs failed: {str(exc)[:2000]}") from exc
    stats.compiles += 1
    fds: dict[str, int] = {}
    try:
        for name in PROGRAMS:
            fds[name] = bpf.load_func(name.encode(), BPF.SCHED_CLS).fd
    except Exception as exc:  # bcc raises bare Exception
        bpf.cleanup()
        raise CompileError(f"loading {name} failed: {exc}") from exc
    return LoadedPrograms(bpf=bpf, fds=fds, build=build_id(pin_dir, sizes, defines, source))


def unpin(pin_dir: Path) -> None:
    """Remove the pinned maps, programs and build id of ``pin_dir``, the directory, and its parent
    (the l7gate pin root) once no other node's directory is left in it."""
    pins = [pin_dir / BUILD_PIN, *(program_pin(pin_dir, p) for p in PROGRAMS)]
    for path in [*pins, *(pin_dir / spec.pin_name for spec in MAP_SPECS)]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for directory in (pin_dir, pin_dir.parent):
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                return
            raise DatapathError(f"cannot remove {directory}: {exc}") from exc
