"""Enforcement survives the loader: pinned maps and attached filters stay; a new loader adopts them."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bpf import loader
from bpf.datapath import Datapath
from bpf.maps import Action, Direction, Event, MapSizes
from bpf.policy_entries import PolicyDecision
from bpf.reasons import DropReason, EventType
from tests.datapath import netlab
from tests.datapath.conftest import IDENTITY, Lab

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def test_loader_exit_keeps_enforcing_and_reopen_adopts(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    script = textwrap.dedent(
        f"""
        from bpf.datapath import Datapath
        from bpf.maps import Action, Direction
        from bpf.policy_entries import PolicyDecision
        dp = Datapath.open({lab.topo.node!r}, netns={lab.node_netns_path!r}, ct_max=16384)
        dp.set_endpoint({b.ifindex}, {b.index}, {IDENTITY["b"]}, ingress_enforced=True)
        rule = PolicyDecision(Direction.INGRESS, {IDENTITY["a"]}, 6, 80, 80, Action.ALLOW)
        dp.sync_policy({b.index}, [rule])
        dp.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=60)
    # the loader is gone: its programs stay attached and read the pinned maps
    assert netlab.tcp_echo(a.name, b.ip4, 80)
    assert not netlab.tcp_echo(a.name, b.ip4, 443)

    old = lab.dp
    assert isinstance(old, Datapath)
    old.close()
    dp = Datapath.open(lab.topo.node, netns=lab.node_netns_path, ct_max=16384)
    lab.dp = dp
    assert dp.policy(b.index), "the pinned policy map was adopted"
    assert dp.endpoints()[b.index].flags & 1
    progs = dp.attached_programs(b.ifindex)
    assert progs == {"ingress": [loader.PROG_FROM_LXC], "egress": [loader.PROG_TO_LXC]}
    assert dp.attached_programs(lab.topo.uplink_ifindex)["ingress"] == [loader.PROG_FROM_UPLINK]
    assert netlab.tcp_echo(a.name, b.ip6, 80)
    assert not netlab.tcp_echo(a.name, b.ip6, 443)
    # the re-attached programs report to the new loader's ring buffer
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.dport == 443)
    assert isinstance(ev, Event) and ev.reason == DropReason.POLICY_DENIED


def test_incompatible_pinned_map_is_refused(tmp_path: Path, lab: Lab) -> None:
    pin_dir = Path("/sys/fs/bpf/l7gate") / f"{lab.topo.prefix}-shape"
    try:
        # a map pinned with another size than asked for (conntrack, then ipcache)
        progs = loader.load(pin_dir, MapSizes(ct=1024, ipcache=4096))
        progs.close()
        with pytest.raises(loader.IncompatibleMapError, match=r"/ct\b"):
            loader.load(pin_dir, MapSizes(ct=2048, ipcache=4096))
        with pytest.raises(loader.IncompatibleMapError, match="ipcache"):
            loader.load(pin_dir, MapSizes(ct=1024, ipcache=8192))
    finally:
        loader.unpin(pin_dir)


def _attached_ids(lab: Lab, ifindex: int) -> dict[str, int]:
    """The ids of the programs attached to ``ifindex`` in the node netns, by tc hook (bpftool)."""
    out = subprocess.run(
        ["nsenter", f"--net={lab.node_netns_path}", "bpftool", "-j", "net", "show"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    ids = {}
    for entry in json.loads(out):
        for tc in entry.get("tc", []):
            if tc.get("ifindex") == ifindex:
                ids[str(tc["kind"]).rpartition("/")[2]] = int(tc["id"])
    return ids


def test_reopen_with_the_same_build_adopts_without_compiling(lab: Lab) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    old = lab.dp
    assert isinstance(old, Datapath)
    old.close()
    dp = Datapath.open(lab.topo.node, netns=lab.node_netns_path, ct_max=16384)
    lab.dp = dp
    before = _attached_ids(lab, b.ifindex)
    assert set(before) == {"ingress", "egress"}
    compiles = loader.stats.compiles
    dp.close()

    dp = Datapath.open(lab.topo.node, netns=lab.node_netns_path, ct_max=16384)
    lab.dp = dp
    assert dp.adopted
    assert loader.stats.compiles == compiles, "the same build was compiled again"
    assert _attached_ids(lab, b.ifindex) == before, "the attached programs changed"
    # the adopted maps are the programs' own: a rule written now decides, and its drop is reported
    dp.set_endpoint(b.ifindex, b.index, IDENTITY["b"], ingress_enforced=True)
    dp.sync_policy(b.index, [PolicyDecision(Direction.INGRESS, IDENTITY["a"], 6, 80, 80, Action.ALLOW)])
    assert netlab.tcp_echo(a.name, b.ip4, 80)
    assert not netlab.tcp_echo(a.name, b.ip4, 443)
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.dport == 443)
    assert isinstance(ev, Event) and ev.reason == DropReason.POLICY_DENIED
    dp.close()

    # another define is another build: compiled, and the new programs replace the old ones
    dp = Datapath.open(lab.topo.node, netns=lab.node_netns_path, ct_max=16384, defines=("L7G_TEST_BUILD=1",))
    lab.dp = dp
    assert not dp.adopted
    assert loader.stats.compiles == compiles + 1
    after = _attached_ids(lab, b.ifindex)
    assert set(after) == {"ingress", "egress"} and after["ingress"] != before["ingress"]
    assert not netlab.tcp_echo(a.name, b.ip4, 443), "enforcing with the new programs"
    assert netlab.tcp_echo(a.name, b.ip4, 80)
    dp.close()

    # and back: the pins now hold the other build, so the default one is compiled again
    dp = Datapath.open(lab.topo.node, netns=lab.node_netns_path, ct_max=16384)
    lab.dp = dp
    assert not dp.adopted and loader.stats.compiles == compiles + 2


def _tc_filters(lab: Lab, device: str) -> list[str]:
    """What ``tc filter show`` lists on the device's ingress and egress (empty: none)."""
    shown = (
        subprocess.run(
            ["tc", "-n", lab.topo.node, "filter", "show", "dev", device, hook],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        for hook in ("ingress", "egress")
    )
    return [text for text in shown if text]


def test_reopen_reattaches_a_device_that_lost_its_qdisc_and_forgets_a_gone_one(lab: Lab) -> None:
    """A restart re-attaches with one replace per hook; a device whose clsact qdisc went (and with it
    our filters) gets the qdisc and the filters again; a recorded device that no longer exists is
    forgotten."""
    a, b = lab.pod("a"), lab.pod("b")
    old = lab.dp
    assert isinstance(old, Datapath)
    gone = 0x7FFFFFF0  # no such ifindex
    old.attach_endpoint(b.ifindex)
    old._progs.map("l7g_devices").put(ctypes.c_uint32(gone), ctypes.c_uint32(1))
    old.set_endpoint(b.ifindex, b.index, IDENTITY["b"], ingress_enforced=True)
    old.sync_policy(b.index, [PolicyDecision(Direction.INGRESS, IDENTITY["a"], 6, 80, 80, Action.ALLOW)])
    old.close()
    try:
        subprocess.run(["tc", "-n", lab.topo.node, "qdisc", "del", "dev", b.host_if, "clsact"], check=True)
        assert not _tc_filters(lab, b.host_if), "the qdisc went with our filters"
    finally:  # the session's lab always holds an open datapath (its teardown destroys it)
        dp = Datapath.open(lab.topo.node, netns=lab.node_netns_path, ct_max=16384)
        lab.dp = dp
    assert gone not in dp.devices() and b.ifindex in dp.devices()
    assert dp.attached_programs(b.ifindex) == {
        "ingress": [loader.PROG_FROM_LXC],
        "egress": [loader.PROG_TO_LXC],
    }
    assert netlab.tcp_echo(a.name, b.ip4, 80)
    assert not netlab.tcp_echo(a.name, b.ip4, 443)
    dp.sync_policy(b.index, [])
    dp.set_endpoint(b.ifindex, b.index, IDENTITY["b"])
