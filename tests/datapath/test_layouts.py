"""Python's ctypes view of every map key/value matches the C structs (as bcc parsed them)."""

from __future__ import annotations

import ctypes
import re

import pytest

from bpf.datapath import Datapath
from bpf.maps import MAP_SPECS, EventRecord, MapSpec
from tests.datapath.conftest import Lab

pytestmark = pytest.mark.root


def layout(t: type[ctypes._CData]) -> tuple[int, list[tuple[str, int, int]]]:
    fields = getattr(t, "_fields_", None)
    if not fields:
        return (ctypes.sizeof(t), [])
    out = []
    for f in fields:
        name = f[0]
        desc = getattr(t, name)
        out.append((name, desc.offset, desc.size))
    return (ctypes.sizeof(t), out)


@pytest.mark.parametrize("spec", MAP_SPECS, ids=lambda s: s.name)
def test_map_layout_matches_c(lab: Lab, spec: MapSpec) -> None:
    dp = lab.dp
    assert isinstance(dp, Datapath)
    handle = dp._progs.map(spec.name)
    assert layout(handle.key_type) == layout(spec.key)
    assert layout(handle.value_type) == layout(spec.value)


C_SIZES = {"__u8": 1, "__u16": 2, "__be16": 2, "__u32": 4, "__be32": 4, "__u64": 8}


def c_layout(fields: list[tuple[str, str]]) -> tuple[int, list[tuple[str, int, int]]]:
    """Offsets of a C struct with natural alignment (what clang does for these types)."""
    off, align_max, out = 0, 1, []
    for name, ctype in fields:
        m = re.fullmatch(r"(\w+) ?(?:\[(\d+)\])?", ctype.strip())
        assert m, ctype
        elem = C_SIZES[m.group(1)]
        count = int(m.group(2) or 1)
        off = (off + elem - 1) // elem * elem
        out.append((name, off, elem * count))
        off += elem * count
        align_max = max(align_max, elem)
    return ((off + align_max - 1) // align_max * align_max, out)


def test_event_layout_matches_c(lab: Lab) -> None:
    dp = lab.dp
    assert isinstance(dp, Datapath)
    fields = dp._progs.event_fields()
    assert fields, "bcc recorded the ring buffer's event type"
    assert c_layout(fields) == layout(EventRecord)
