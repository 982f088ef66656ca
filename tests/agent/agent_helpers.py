"""Shared helpers of the agent tests: seed policies, the seed-002 endpoints, a fake datapath."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bpf.maps import DeviceKind, EndpointFlags, EndpointValue, IpcacheValue, endpoint_value
from bpf.policy_entries import PolicyDecision, PolicyEntryKey, PolicyEntryValue, policy_entries
from l7.agent.node import AgentConfig
from l7.endpoints import EndpointsFile
from l7.plan import IPNetwork
from tests.unit.resolve.resolve_helpers import ENDPOINTS, REPO, SEEDS, policies, seed_002, seeds

SEED_002_ENDPOINTS = ENDPOINTS / "seed-002.yaml"
SEED_002_LAB = REPO / "deploy" / "lab" / "seed-002.yaml"
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy and return that; fail naming ``what`` at the
    deadline (the tests wait on conditions, never for a fixed time)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


__all__ = [
    "REPO",
    "SEEDS",
    "SEED_002_ENDPOINTS",
    "SEED_002_LAB",
    "FakeDatapath",
    "policies",
    "seed_002",
    "seed_002_agent_config",
    "seeds",
    "wait_for",
]


def seed_002_agent_config(tmp_path: Path, policies: Path, **settings: Any) -> AgentConfig:
    """Node ``k8s-w1`` of the seed-002 endpoints with ``default/service-pod`` on ``lo`` (ifindex 1)."""

    def interfaces(_file: EndpointsFile) -> dict[str, str]:
        return {"default/service-pod": "lo"}

    return AgentConfig(
        node="k8s-w1",
        policies=policies,
        endpoints=SEED_002_ENDPOINTS,
        state_dir=tmp_path / "state",
        datapath_name="test",
        interfaces=interfaces,
        **settings,
    )


class FakeDatapath:
    """The maps of :class:`bpf.datapath.Datapath` as dicts, counting writes."""

    def __init__(self) -> None:
        self.devs: dict[int, DeviceKind] = {}
        self.eps: dict[int, EndpointValue] = {}
        self.ips: dict[IPNetwork, IpcacheValue] = {}
        self.pol: dict[int, dict[PolicyEntryKey, PolicyEntryValue]] = {}
        self.writes = 0
        self.closed = False
        self.revision = 0
        self.proxy: set[tuple[int, int]] = set()  # l7g_proxy_ports (not counted in ``writes``)

    def devices(self) -> dict[int, DeviceKind]:
        return dict(self.devs)

    def attach_endpoint(self, ifindex: int) -> None:
        self.devs[ifindex] = DeviceKind.ENDPOINT
        self.writes += 1

    def attach_uplink(self, ifindex: int) -> None:
        self.devs[ifindex] = DeviceKind.UPLINK
        self.writes += 1

    def detach(self, ifindex: int) -> None:
        self.devs.pop(ifindex, None)
        self.writes += 1

    def set_endpoint(
        self,
        ifindex: int,
        endpoint_id: int,
        identity: int,
        *,
        ingress_enforced: bool = False,
        egress_enforced: bool = False,
        audit: bool = False,
    ) -> None:
        flags = EndpointFlags.NONE
        if ingress_enforced:
            flags |= EndpointFlags.INGRESS_ENFORCED
        if egress_enforced:
            flags |= EndpointFlags.EGRESS_ENFORCED
        if audit:
            flags |= EndpointFlags.AUDIT
        self.eps[endpoint_id] = endpoint_value(endpoint_id, identity, flags, ifindex)
        self.writes += 1

    def delete_endpoint(self, endpoint_id: int) -> None:
        self.eps.pop(endpoint_id, None)
        self.pol.pop(endpoint_id, None)
        self.writes += 1

    def bump_policy_revision(self) -> int:
        self.revision += 1
        return self.revision

    def endpoints(self) -> dict[int, EndpointValue]:
        return dict(self.eps)

    def set_ipcache(self, prefix: IPNetwork, identity: int, endpoint_id: int = 0) -> None:
        self.ips[prefix] = IpcacheValue(identity=identity, endpoint_id=endpoint_id)
        self.writes += 1

    def delete_ipcache(self, prefix: IPNetwork) -> bool:
        self.writes += 1
        return self.ips.pop(prefix, None) is not None

    def ipcache(self) -> dict[IPNetwork, IpcacheValue]:
        return dict(self.ips)

    def sync_policy(self, endpoint_id: int, decisions: list[PolicyDecision]) -> tuple[int, int]:
        want = policy_entries(decisions)
        have = self.pol.get(endpoint_id, {})
        written = sum(1 for k, v in want.items() if have.get(k) != v)
        deleted = sum(1 for k in have if k not in want)
        self.writes += written + deleted
        if want:
            self.pol[endpoint_id] = want
        else:
            self.pol.pop(endpoint_id, None)
        return written, deleted

    def proxy_ports(self) -> set[tuple[int, int]]:
        return set(self.proxy)

    def set_proxy_port(self, port: int, proto: int) -> None:
        self.proxy.add((port, proto))

    def delete_proxy_port(self, port: int, proto: int) -> bool:
        if (port, proto) not in self.proxy:
            return False
        self.proxy.discard((port, proto))
        return True

    def close(self) -> None:
        self.closed = True
