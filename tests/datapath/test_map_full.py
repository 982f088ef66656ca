"""A full map: new entries are refused and reported, nothing is allowed by it, existing traffic goes on."""

from __future__ import annotations

import ipaddress

import pytest

from l7.agent.applier import Delta
from l7.agent.sync import sync_delta
from l7.plan import IpcacheState
from tests.datapath import netlab
from tests.datapath.conftest import IDENTITY, Lab

pytestmark = pytest.mark.root

FILL = ipaddress.ip_network("198.18.0.0/15")


def test_full_ipcache_refuses_new_entries_fails_closed_and_keeps_existing_flows(lab: Lab) -> None:
    from bpf.datapath import Datapath
    from bpf.errors import MapWriteError

    dp = lab.dp
    assert isinstance(dp, Datapath)
    a, b = lab.pod("a"), lab.pod("b")
    assert netlab.tcp_echo(a.name, b.ip4, 80)
    filled: list[ipaddress.IPv4Network] = []
    try:
        for address in FILL:  # 131,072 addresses: more than the map holds
            net = ipaddress.ip_network(f"{address}/32")
            try:
                dp.set_ipcache(net, 2)
            except MapWriteError:
                break
            filled.append(net)
        else:
            pytest.fail("the ipcache never filled up")
        assert len(filled) > 60000
        new = ipaddress.ip_network("10.255.0.7/32")
        stats = sync_delta(dp, Delta(ipcache={new: IpcacheState(IDENTITY["c"], 0)}))
        assert stats.failed == 1 and stats.ipcache_written == 0
        assert "ipcache 10.255.0.7/32" in stats.notes[0]
        assert new not in dp.ipcache()
        assert netlab.tcp_echo(a.name, b.ip4, 80)  # established identities and flows are untouched
    finally:
        for net in filled:
            dp.delete_ipcache(net)
    assert netlab.tcp_echo(a.name, b.ip4, 80)
