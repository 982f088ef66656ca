"""Enforcement survives the loader: pinned maps and attached filters stay; a new loader adopts them."""

from __future__ import annotations

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
