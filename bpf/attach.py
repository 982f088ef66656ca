"""Netlink side of the datapath (pyroute2): clsact qdiscs, tc bpf filters, proxy policy routing.

Every operation runs in the node's network namespace: :class:`Netlink` opens its netlink socket
there (``IPRoute(netns=path)``), so the caller may live in any namespace as long as it sees the
node's bpffs (``nsenter --net=...`` or no namespace switch at all; never ``ip netns exec``, which
remounts /sys and hides /sys/fs/bpf).

Filters are installed with ``replace`` and an explicit priority and handle, so re-attaching
swaps the program atomically (enforcement never stops) instead of stacking a second filter.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bpf.errors import NetlinkOpError

INGRESS_PARENT = "ffff:fff2"
EGRESS_PARENT = "ffff:fff3"
FILTER_PRIO = 1
FILTER_HANDLE = 1
ETH_P_ALL = 0x0003
RTN_LOCAL = 2

Hook = Literal["ingress", "egress"]


def _parent(hook: Hook) -> str:
    return INGRESS_PARENT if hook == "ingress" else EGRESS_PARENT


class Netlink:
    """A netlink socket in one network namespace (``netns`` = path or name; None = current)."""

    def __init__(self, netns: str | None = None) -> None:
        try:
            self._ipr: Any = IPRoute(netns=netns) if netns else IPRoute()
        except (OSError, NetlinkError) as exc:
            raise NetlinkOpError(f"cannot open netlink in netns {netns!r}: {exc}") from exc

    def close(self) -> None:
        self._ipr.close()

    def ifindex(self, name: str) -> int:
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            raise NetlinkOpError(f"no interface {name!r}")
        return int(found[0])

    def link_exists(self, ifindex: int) -> bool:
        try:
            self._ipr.get_links(ifindex)
        except NetlinkError:
            return False
        return True

    def ensure_clsact(self, ifindex: int) -> None:
        try:
            self._ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise NetlinkOpError(f"adding clsact to ifindex {ifindex}: {exc}") from exc

    def attach(self, ifindex: int, hook: Hook, fd: int, name: str) -> None:
        """Attach (or atomically replace) the bpf filter of ``hook`` on ``ifindex``. The replace is
        tried first (a restart re-attaching 100 devices: one request each); the clsact qdisc is added
        only when it finds none."""
        try:
            self._replace_filter(ifindex, hook, fd, name)
            return
        except NetlinkError as exc:
            if exc.code not in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc: EINVAL
                raise NetlinkOpError(f"attaching {name} to {hook} of ifindex {ifindex}: {exc}") from exc
        self.ensure_clsact(ifindex)
        try:
            self._replace_filter(ifindex, hook, fd, name)
        except NetlinkError as exc:
            raise NetlinkOpError(f"attaching {name} to {hook} of ifindex {ifindex}: {exc}") from exc

    def _replace_filter(self, ifindex: int, hook: Hook, fd: int, name: str) -> None:
        self._ipr.tc(
            "replace-filter",
            "bpf",
            ifindex,
            handle=FILTER_HANDLE,
            fd=fd,
            name=name,
            parent=_parent(hook),
            prio=FILTER_PRIO,
            protocol=ETH_P_ALL,
            classid=1,
            direct_action=True,
        )

    def detach(self, ifindex: int, hook: Hook) -> None:
        """Remove our filter; a missing device, qdisc or filter is fine."""
        try:
            self._ipr.tc(
                "del-filter",
                "bpf",
                ifindex,
                handle=FILTER_HANDLE,
                parent=_parent(hook),
                prio=FILTER_PRIO,
                protocol=ETH_P_ALL,
            )
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                raise NetlinkOpError(f"detaching {hook} of ifindex {ifindex}: {exc}") from exc

    def filter_names(self, ifindex: int, hook: Hook) -> list[str]:
        """Names of the bpf programs attached to ``hook`` of ``ifindex``."""
        try:
            filters = self._ipr.get_filters(ifindex, parent=_parent(hook))
        except NetlinkError:
            return []
        names = []
        for f in filters:
            opts = f.get_attr("TCA_OPTIONS")
            if opts is not None and opts.get_attr("TCA_BPF_NAME"):
                names.append(str(opts.get_attr("TCA_BPF_NAME")))
        return names

    def ensure_proxy_routing(self, table: int, priority: int, mark: int, mask: int) -> None:
        """``fwmark mark/mask lookup table`` and ``local default dev lo table table``, v4 and v6."""
        lo = self.ifindex("lo")
        for family, dst in ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0")):
            if not self._has_rule(family, table, priority, mark, mask):
                try:
                    self._ipr.rule(
                        "add", family=family, table=table, priority=priority, fwmark=mark, fwmask=mask
                    )
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise NetlinkOpError(f"adding the proxy rule: {exc}") from exc
            try:
                self._ipr.route(
                    "replace", family=family, dst=dst, table=table, type=RTN_LOCAL, oif=lo, scope=254
                )
            except NetlinkError as exc:
                raise NetlinkOpError(f"adding the proxy route {dst}: {exc}") from exc

    def _has_rule(self, family: int, table: int, priority: int, mark: int, mask: int) -> bool:
        for rule in self._ipr.get_rules(family=family):
            if (
                rule.get_attr("FRA_TABLE") == table
                and rule.get_attr("FRA_PRIORITY") == priority
                and rule.get_attr("FRA_FWMARK") == mark
                and rule.get_attr("FRA_FWMASK") == mask
            ):
                return True
        return False

    def remove_proxy_routing(self, table: int, priority: int, mark: int, mask: int) -> None:
        for family, dst in ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0")):
            while self._has_rule(family, table, priority, mark, mask):
                try:
                    self._ipr.rule(
                        "del", family=family, table=table, priority=priority, fwmark=mark, fwmask=mask
                    )
                except NetlinkError as exc:
                    raise NetlinkOpError(f"removing the proxy rule: {exc}") from exc
            try:
                self._ipr.route("del", family=family, dst=dst, table=table, type=RTN_LOCAL)
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT):
                    raise NetlinkOpError(f"removing the proxy route {dst}: {exc}") from exc
