"""Stable proxy ports: a pure allocator that keeps every previous assignment it can."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xds.errors import PortAllocationError


def assign_ports(keys: Iterable[str], previous: Mapping[str, int], ports: range) -> dict[str, int]:
    """Give each rule set key a port in ``ports``.

    A key keeps its previous port (if still in range); new keys get the lowest free ports in key order,
    so the result does not depend on iteration order. Keys that are gone release their ports.
    """
    wanted = sorted(set(keys))
    assigned = {key: previous[key] for key in wanted if key in previous and previous[key] in ports}
    used = set(assigned.values())
    if len(used) != len(assigned):
        raise PortAllocationError("previous assignment gives one port to two keys")
    free = (port for port in ports if port not in used)
    for key in wanted:
        if key not in assigned:
            port = next(free, None)
            if port is None:
                raise PortAllocationError(f"no free proxy port in {ports.start}..{ports.stop - 1}")
            assigned[key] = port
    return assigned
