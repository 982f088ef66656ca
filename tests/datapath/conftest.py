"""Fixtures for the datapath tests: one lab (netns topology + loaded datapath) per session."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.datapath import netlab

IDENTITY = {"a": 1001, "b": 1002, "c": 1003}
TCP_PORTS = (80, 443, 8080, 9000, 9001)
UDP_PORTS = (53, 5353)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the datapath tests need root (netns, tc, BPF); CI runs them as root")


@dataclass
class Lab:
    topo: netlab.Topology
    dp: object  # bpf.datapath.Datapath; replaced when a test re-opens it
    servers: list[netlab.EchoServer] = field(default_factory=list)

    @property
    def node_netns_path(self) -> str:
        return f"/run/netns/{self.topo.node}"

    def pod(self, name: str) -> netlab.Pod:
        return self.topo.pods[name]

    def setup_endpoints(self) -> None:
        from bpf.datapath import Datapath

        dp = self.dp
        assert isinstance(dp, Datapath)
        for name, pod in self.topo.pods.items():
            dp.set_endpoint(pod.ifindex, pod.index, IDENTITY[name])
            dp.set_ipcache(f"{pod.ip4}/32", IDENTITY[name], pod.index)
            dp.set_ipcache(f"{pod.ip6}/128", IDENTITY[name], pod.index)
            dp.set_ipcache(f"{pod.node_ip4}/32", 1)
            dp.set_ipcache(f"{pod.node_ip6}/128", 1)

    def reset(self) -> None:
        from bpf.datapath import Datapath
        from bpf.maps import Config

        dp = self.dp
        assert isinstance(dp, Datapath)
        for pod in self.topo.pods.values():
            dp.sync_policy(pod.index, [])
        for key in Config:
            dp.set_config(key, 0)
        for port, proto in dp.proxy_ports():
            dp.delete_proxy_port(port, proto)
        self.setup_endpoints()
        dp.ct_flush()
        dp.poll_events(0)

    def wait_event(self, pred: Callable[[object], bool], timeout: float = 3.0) -> object:
        from bpf.datapath import Datapath

        dp = self.dp
        assert isinstance(dp, Datapath)
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            for ev in dp.poll_events(0.1):
                seen.append(ev)
                if pred(ev):
                    return ev
        raise AssertionError(f"no matching event within {timeout}s; saw {seen}")


@pytest.fixture(scope="session")
def lab_session() -> Iterator[Lab]:
    require_root()
    from bpf.datapath import BPFFS, PIN_ROOT, Datapath
    from bpf.loader import unpin

    if not os.path.ismount(BPFFS):
        netlab.sh("mount", "-t", "bpf", "bpf", str(BPFFS))
    prefix = f"l7gdp-{secrets.token_hex(3)}"
    topo = netlab.build(prefix)
    lab = Lab(topo=topo, dp=None)
    try:
        dp = Datapath.open(topo.node, netns=f"/run/netns/{topo.node}", ct_max=16384)
        lab.dp = dp
        for pod in topo.pods.values():
            dp.attach_endpoint(pod.ifindex)
        dp.attach_uplink(topo.uplink_ifindex)
        for name in ("b", "c"):
            lab.servers.append(netlab.EchoServer(topo.pods[name].name, TCP_PORTS, UDP_PORTS))
        lab.servers.append(netlab.EchoServer(topo.world, TCP_PORTS, UDP_PORTS))
        yield lab
    finally:
        for s in lab.servers:
            s.close()
        if isinstance(lab.dp, Datapath):
            lab.dp.destroy()
        netlab.teardown(topo)
        unpin(PIN_ROOT / topo.node)


@pytest.fixture
def lab(lab_session: Lab) -> Lab:
    lab_session.reset()
    return lab_session
