"""bpf/lib/reasons.h and bpf/reasons.py agree; so do the proxy port map size and directions of the C
headers and bpf/maps.py, the agent chooses proxy ports where it says it does, and the resolver's
directions convert to the datapath's."""

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


def test_proxy_port_map_size_agrees() -> None:
    from bpf import maps

    m = re.search(
        r"^#define\s+L7G_PROXY_PORTS_MAX\s+(\d+)", (HEADER.parent / "maps.h").read_text(), re.MULTILINE
    )
    assert m and int(m.group(1)) == maps.PROXY_PORTS_MAX
    assert "PROXY_PORT_MIN" not in COMMON.read_text(), "the datapath protects listed ports, not a range"


def test_proxy_port_map_holds_every_port_of_the_range_for_both_protocols() -> None:
    """The agent never has to refuse a proxy port for want of room in ``l7g_proxy_ports``."""
    from bpf import maps
    from l7.plan.datapath import PROXY_PORT_MAX, PROXY_PORT_MIN

    assert 1024 < PROXY_PORT_MIN <= PROXY_PORT_MAX <= 65535
    size = PROXY_PORT_MAX - PROXY_PORT_MIN + 1
    assert size * len(maps.PROXY_PORT_PROTOCOLS) <= maps.PROXY_PORTS_MAX


def test_agent_allocates_proxy_ports_from_its_range_never_on_node_service_ports() -> None:
    from l7.plan import ProxyPorts
    from l7.plan.datapath import NODE_SERVICE_PORTS, PROXY_PORT_MAX, PROXY_PORT_MIN

    ports = ProxyPorts()
    ports.assign([f"o-{i}" for i in range(9000)])  # most of the range: probing passes the service ports
    got = set(ports.ports.values())
    assert len(got) == 9000
    assert all(PROXY_PORT_MIN <= p <= PROXY_PORT_MAX for p in got)
    assert not got & NODE_SERVICE_PORTS
    assert {10250, 10249, 10256, 10257, 10259} <= NODE_SERVICE_PORTS
    assert ports.protected() == {(p, proto) for p in got for proto in (6, 17)}


def test_directions_agree() -> None:
    from bpf.maps import Direction
    from l7.plan import datapath_direction
    from l7.resolve import Direction as ResolverDirection

    pat = re.compile(r"^#define\s+DIR_([A-Z]+)\s+(\d+)", re.MULTILINE)
    c = {m.group(1): int(m.group(2)) for m in pat.finditer(COMMON.read_text())}
    assert c == {d.name: d.value for d in Direction}
    converted = {d.value: datapath_direction(d) for d in ResolverDirection}
    assert converted == {"ingress": Direction.INGRESS, "egress": Direction.EGRESS}
