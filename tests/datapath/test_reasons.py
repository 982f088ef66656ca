"""bpf/lib/reasons.h and bpf/reasons.py agree; so do the proxy port ranges and directions of common.h and
bpf/maps.py, and the resolver's directions convert to the datapath's."""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path

import pytest

from bpf.reasons import DropReason, EventType, Hook, Verdict

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "lib" / "reasons.h"


def header_defines(prefix: str) -> dict[str, int]:
    pat = re.compile(rf"^#define\s+{prefix}_([A-Z0-9_]+)\s+(\d+)", re.MULTILINE)
    return {m.group(1): int(m.group(2)) for m in pat.finditer(HEADER.read_text())}


@pytest.mark.parametrize(
    ("prefix", "enum"), [("DROP", DropReason), ("VERDICT", Verdict), ("EVENT", EventType), ("HOOK", Hook)]
)
def test_header_and_enum_agree(prefix: str, enum: type[IntEnum]) -> None:
    c = header_defines(prefix)
    assert c, f"no {prefix}_* defines found"
    assert c == {m.name: m.value for m in enum}


def test_drop_reasons_are_unique() -> None:
    values = list(header_defines("DROP").values())
    assert len(values) == len(set(values))


COMMON = HEADER.parent / "common.h"


def test_proxy_port_range_agrees() -> None:
    from bpf import maps

    pat = re.compile(r"^#define\s+(PROXY_PORT_MIN|PROXY_PORT_MAX)\s+(\d+)", re.MULTILINE)
    c = {m.group(1): int(m.group(2)) for m in pat.finditer(COMMON.read_text())}
    assert c == {"PROXY_PORT_MIN": maps.PROXY_PORT_MIN, "PROXY_PORT_MAX": maps.PROXY_PORT_MAX}
    assert 1024 < maps.PROXY_PORT_MIN <= maps.PROXY_PORT_MAX <= 65535


def test_agent_allocates_proxy_ports_from_the_datapath_range() -> None:
    from bpf import maps
    from l7.plan import ProxyPorts

    ports = ProxyPorts()
    ports.assign([f"o-{i}" for i in range(200)])
    assert all(maps.PROXY_PORT_MIN <= p <= maps.PROXY_PORT_MAX for p in ports.ports.values())


def test_directions_agree() -> None:
    from bpf.maps import Direction
    from l7.plan import datapath_direction
    from l7.resolve import Direction as ResolverDirection

    pat = re.compile(r"^#define\s+DIR_([A-Z]+)\s+(\d+)", re.MULTILINE)
    c = {m.group(1): int(m.group(2)) for m in pat.finditer(COMMON.read_text())}
    assert c == {d.name: d.value for d in Direction}
    converted = {d.value: datapath_direction(d) for d in ResolverDirection}
    assert converted == {"ingress": Direction.INGRESS, "egress": Direction.EGRESS}
