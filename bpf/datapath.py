"""The node datapath API the agent calls: load, attach, and write the maps.

Data flow::

    agent ──► Datapath ──► loader (bcc: compile, load, pinned maps under /sys/fs/bpf/l7gate/<node>)
                      ├──► attach (pyroute2 in the node netns: clsact + bpf filters, proxy fwmark routing)
                      └──► maps / policy_entries (pure layouts and LPM entry computation)
    tc programs ──► ring buffer ──► Datapath.poll_events() ──► Event

Lifecycle: :meth:`Datapath.open` adopts what a previous agent left (pinned maps and the devices it
attached, recorded in the pinned ``devices`` map). When the programs pinned beside the maps were
built from the same source and defines (:mod:`bpf.adopt`: the build id), it takes them as they are:
no compile, no bcc, the same programs stay attached. Otherwise it compiles and swaps in the new
programs with ``tc filter replace``, so enforcement never stops either way. :meth:`close` leaves
everything in place (the kernel keeps enforcing while the agent is down); :meth:`destroy` removes
filters, routing and pins.

Run the agent in the node's netns (``nsenter --net=/run/netns/NODE``) or anywhere that sees the
node's bpffs and pass ``netns=`` (a path such as /run/netns/NODE): netlink operations then run in
that namespace through pyroute2; BPF programs and maps are namespace-independent, and the socket
lookups for redirects happen in the namespace of the device the packet arrives on.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from bpf import adopt, loader
from bpf.attach import Netlink
from bpf.errors import DatapathError, NetlinkOpError
from bpf.maps import (
    CONFIG_SIZE,
    MARK_MASK,
    MARK_TO_PROXY,
    PROXY_ROUTE_TABLE,
    PROXY_RULE_PRIORITY,
    Action,
    Config,
    CtEntry,
    DeviceKind,
    Direction,
    EndpointFlags,
    EndpointValue,
    Event,
    IPAddress,
    IpcacheValue,
    IPNetwork,
    MapSizes,
    PolicyKey,
    PolicyValue,
    ProxyPortKey,
    endpoint_value,
    ipcache_key,
    ipcache_prefix,
    policy_key,
    policy_value,
    proxy_port_key,
    proxy_port_of,
)
from bpf.policy_entries import PolicyDecision, PolicyEntryKey, PolicyEntryValue, policy_entries

log = logging.getLogger(__name__)

PIN_ROOT = Path("/sys/fs/bpf/l7gate")
BPFFS = Path("/sys/fs/bpf")

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


def _entry_key(endpoint_id: int, key: PolicyEntryKey) -> PolicyKey:
    return policy_key(
        endpoint_id, key.direction, key.peer_identity, key.proto, key.port, port_prefix=key.port_prefix
    )


def _decode_policy_key(raw: bytes) -> tuple[int, PolicyEntryKey]:
    k = PolicyKey.from_buffer_copy(raw)
    direction = Direction(k.dir)
    if k.prefixlen <= 72:
        return k.endpoint_id, PolicyEntryKey(direction, k.peer_identity, None)
    port = int.from_bytes(bytes(k)[14:16], "big")
    return k.endpoint_id, PolicyEntryKey(direction, k.peer_identity, k.proto, port, k.prefixlen - 80)


class Datapath:
    """One node's datapath. Create with :meth:`open`."""

    def __init__(
        self, node: str, pin_dir: Path, progs: loader.LoadedPrograms | adopt.PinnedPrograms, nl: Netlink
    ) -> None:
        self.node = node
        self.pin_dir = pin_dir
        self._progs = progs
        self._nl = nl
        self.sizes = MapSizes()  # the maps' maximum entries (set by open)
        self._events: list[Event] = []
        # held while polling the ring buffer: close() must not free it under a polling thread
        self._events_lock = threading.Lock()
        self._closed = False
        self._policy: dict[int, dict[PolicyEntryKey, PolicyEntryValue]] | None = None
        self.adopted = isinstance(progs, adopt.PinnedPrograms)  # no compile: a previous agent's programs
        self._progs.open_events(lambda data: self._events.append(Event.from_bytes(data)))

    # lifecycle -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        node: str,
        netns: str | None = None,
        *,
        ct_max: int | None = None,
        sizes: MapSizes | None = None,
        proxy_ports: Iterable[tuple[int, int]] = (),
        defines: tuple[str, ...] = (),
    ) -> Datapath:
        """Load the programs for ``node``, adopting pinned maps and re-attaching recorded devices.
        ``sizes``: the maps' maximum entries (``ct_max`` overrides the conntrack size).
        ``proxy_ports``: (port, protocol) pairs the node's proxies may already listen on, written to
        ``l7g_proxy_ports`` before the new programs replace the old ones (an upgrade from a datapath
        without the map, or pins removed while proxies run, never leaves a proxy port open).
        ``defines``: more ``NAME=VALUE`` definitions for the compile (part of the build id).

        The programs pinned by the previous open are adopted when their build id is this one's;
        otherwise (first start, source or defines changed, pins missing or not the programs' maps)
        the programs are compiled, attached, and then pinned with their build id."""
        sizes = sizes or MapSizes()
        if ct_max is not None:
            sizes = dataclasses.replace(sizes, ct=ct_max)
        if not node or "/" in node or node.startswith("."):
            raise DatapathError(f"bad node name {node!r}")
        if not os.path.ismount(BPFFS):
            raise DatapathError(f"{BPFFS} is not a mounted bpffs (mount -t bpf bpf {BPFFS})")
        pin_dir = PIN_ROOT / node
        build = loader.build_id(pin_dir, sizes, defines)
        progs: loader.LoadedPrograms | adopt.PinnedPrograms
        try:
            progs = adopt.adopt(pin_dir, sizes, build)
        except adopt.NotAdoptable as exc:
            log.info("datapath %s: compiling (%s)", node, exc)
            adopt.forget(pin_dir)
            progs = loader.load(pin_dir, sizes, defines)
        try:
            nl = Netlink(netns)
        except DatapathError:
            progs.close()
            raise
        dp = cls(node, pin_dir, progs, nl)
        dp.sizes = sizes
        try:
            for port, proto in proxy_ports:
                dp.set_proxy_port(port, proto)
            nl.ensure_proxy_routing(PROXY_ROUTE_TABLE, PROXY_RULE_PRIORITY, MARK_TO_PROXY, MARK_MASK)
            dp._reattach()
            if not dp.adopted:
                adopt.record(pin_dir, progs.fds, build)
        except DatapathError:
            dp.close()
            raise
        return dp

    def close(self) -> None:
        """Release this process's handles; filters, routing and pinned maps stay (enforcement goes on).
        Waits for a poll in progress on another thread (at most its timeout): freeing the ring buffer
        under ``ring_buffer__poll`` would crash the process."""
        with self._events_lock:
            self._closed = True
            self._nl.close()
            self._progs.close()

    def destroy(self) -> None:
        """Detach every recorded device, remove the proxy routing and the pinned maps, then close."""
        for ifindex, _kind in self.devices().items():
            self._detach_filters(ifindex)
        self._nl.remove_proxy_routing(PROXY_ROUTE_TABLE, PROXY_RULE_PRIORITY, MARK_TO_PROXY, MARK_MASK)
        self.close()
        loader.unpin(self.pin_dir)

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # devices ---------------------------------------------------------------------------------
    def devices(self) -> dict[int, DeviceKind]:
        out = {}
        for k, v in self._progs.map("l7g_devices").items():
            out[_u32.from_buffer_copy(k).value] = DeviceKind(_u32.from_buffer_copy(v).value)
        return out

    def _reattach(self) -> None:
        """Attach this open's programs to every recorded device; forget the devices that are gone
        (looked up only when an attach fails: a restart is two requests per device)."""
        for ifindex, kind in self.devices().items():
            try:
                if kind == DeviceKind.ENDPOINT:
                    self.attach_endpoint(ifindex)
                else:
                    self.attach_uplink(ifindex)
            except NetlinkOpError:
                if self._nl.link_exists(ifindex):
                    raise
                self._progs.map("l7g_devices").delete(_u32(ifindex))

    def attach_endpoint(self, ifindex: int) -> None:
        """Attach the pod hooks to a workload's host-side veth (tc ingress and egress)."""
        fds = self._progs.fds
        self._nl.attach(ifindex, "ingress", fds[loader.PROG_FROM_LXC], loader.PROG_FROM_LXC)
        self._nl.attach(ifindex, "egress", fds[loader.PROG_TO_LXC], loader.PROG_TO_LXC)
        self._progs.map("l7g_devices").put(_u32(ifindex), _u32(DeviceKind.ENDPOINT))

    def attach_uplink(self, ifindex: int) -> None:
        """Attach the uplink hooks to the node's uplink device: tc ingress (other nodes and the world
        into the node and its pods) and tc egress (the host's egress policy; a no-op without a host
        endpoint)."""
        fds = self._progs.fds
        self._nl.attach(ifindex, "ingress", fds[loader.PROG_FROM_UPLINK], loader.PROG_FROM_UPLINK)
        self._nl.attach(ifindex, "egress", fds[loader.PROG_TO_UPLINK], loader.PROG_TO_UPLINK)
        self._progs.map("l7g_devices").put(_u32(ifindex), _u32(DeviceKind.UPLINK))

    def _detach_filters(self, ifindex: int) -> None:
        self._nl.detach(ifindex, "ingress")
        self._nl.detach(ifindex, "egress")

    def detach(self, ifindex: int) -> None:
        """Remove our filters from a device and forget it."""
        self._detach_filters(ifindex)
        self._progs.map("l7g_devices").delete(_u32(ifindex))

    def attached_programs(self, ifindex: int) -> dict[str, list[str]]:
        """Names of the bpf programs on a device's ingress and egress (for status and tests)."""
        return {hook: self._nl.filter_names(ifindex, hook) for hook in ("ingress", "egress")}

    # endpoints -------------------------------------------------------------------------------
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
        """Write an endpoint (by ifindex and by id). Its IPs go to the ipcache with its id.
        ``ifindex`` 0: an endpoint without a device of its own (the host endpoint, by id only)."""
        if endpoint_id <= 0:
            raise DatapathError("endpoint ids start at 1")
        flags = EndpointFlags.NONE
        if ingress_enforced:
            flags |= EndpointFlags.INGRESS_ENFORCED
        if egress_enforced:
            flags |= EndpointFlags.EGRESS_ENFORCED
        if audit:
            flags |= EndpointFlags.AUDIT
        value = endpoint_value(endpoint_id, identity, flags, ifindex)
        # By id first: from_lxc of another pod may already see this endpoint in the ipcache.
        self._progs.map("l7g_endpoint_ids").put(_u32(endpoint_id), value)
        if ifindex > 0:
            self._progs.map("l7g_endpoints").put(_u32(ifindex), value)

    def delete_endpoint(self, endpoint_id: int) -> None:
        """Remove an endpoint and its policy entries (its ipcache entries are the caller's)."""
        raw = self._progs.map("l7g_endpoint_ids").get(_u32(endpoint_id))
        if raw is not None:
            ifindex = EndpointValue.from_buffer_copy(raw).ifindex
            if ifindex > 0:
                self._progs.map("l7g_endpoints").delete(_u32(ifindex))
            self._progs.map("l7g_endpoint_ids").delete(_u32(endpoint_id))
        self.sync_policy(endpoint_id, [])

    def endpoints(self) -> dict[int, EndpointValue]:
        """Endpoints by id."""
        return {
            _u32.from_buffer_copy(k).value: EndpointValue.from_buffer_copy(v)
            for k, v in self._progs.map("l7g_endpoint_ids").items()
        }

    # ipcache ---------------------------------------------------------------------------------
    def set_ipcache(self, prefix: IPNetwork | IPAddress | str, identity: int, endpoint_id: int = 0) -> None:
        """Map a prefix (or address) to an identity; ``endpoint_id`` marks a local endpoint's IP."""
        net = ipaddress.ip_network(prefix) if not isinstance(prefix, IPNetwork) else prefix
        self._progs.map("l7g_ipcache").put(
            ipcache_key(net), IpcacheValue(identity=identity, endpoint_id=endpoint_id)
        )

    def delete_ipcache(self, prefix: IPNetwork | IPAddress | str) -> bool:
        net = ipaddress.ip_network(prefix) if not isinstance(prefix, IPNetwork) else prefix
        return self._progs.map("l7g_ipcache").delete(ipcache_key(net))

    def ipcache(self) -> dict[IPNetwork, IpcacheValue]:
        return {
            ipcache_prefix(k): IpcacheValue.from_buffer_copy(v)
            for k, v in self._progs.map("l7g_ipcache").items()
        }

    # policy ----------------------------------------------------------------------------------
    def _current_policy(self) -> dict[int, dict[PolicyEntryKey, PolicyEntryValue]]:
        if self._policy is None:
            self._policy = {}
            for k, v in self._progs.map("l7g_policy").items():
                ep, key = _decode_policy_key(k)
                val = PolicyValue.from_buffer_copy(v)
                self._policy.setdefault(ep, {})[key] = PolicyEntryValue(Action(val.action), val.proxy_port)
        return self._policy

    def sync_policy(self, endpoint_id: int, decisions: list[PolicyDecision]) -> tuple[int, int]:
        """Make the endpoint's policy entries those of ``decisions``; writes only the difference.

        Returns (entries written, entries deleted). New and changed entries are written before
        stale ones are deleted.
        """
        want = policy_entries(decisions)
        current = self._current_policy()
        have = current.get(endpoint_id, {})
        m = self._progs.map("l7g_policy")
        written = deleted = 0
        for key, value in want.items():
            if have.get(key) != value:
                m.put(_entry_key(endpoint_id, key), policy_value(value.action, value.proxy_port))
                written += 1
        for key in [k for k in have if k not in want]:
            m.delete(_entry_key(endpoint_id, key))
            deleted += 1
        if want:
            current[endpoint_id] = dict(want)
        else:
            current.pop(endpoint_id, None)
        return written, deleted

    def policy(self, endpoint_id: int) -> dict[PolicyEntryKey, PolicyEntryValue]:
        return dict(self._current_policy().get(endpoint_id, {}))

    # proxy ports -----------------------------------------------------------------------------
    def proxy_ports(self) -> set[tuple[int, int]]:
        """The (port, protocol) pairs direct traffic to a node address is dropped for."""
        return {
            proxy_port_of(ProxyPortKey.from_buffer_copy(k))
            for k, _ in self._progs.map("l7g_proxy_ports").items()
        }

    def set_proxy_port(self, port: int, proto: int) -> None:
        """Protect ``port`` for ``proto``: write it before a proxy listens there (MapWriteError when the
        kernel refuses)."""
        self._progs.map("l7g_proxy_ports").put(proxy_port_key(port, proto), _u32(1))

    def delete_proxy_port(self, port: int, proto: int) -> bool:
        """Stop protecting ``port`` for ``proto`` (only once nothing of ours listens there)."""
        return self._progs.map("l7g_proxy_ports").delete(proxy_port_key(port, proto))

    # config ----------------------------------------------------------------------------------
    def set_config(self, key: Config, value: int) -> None:
        if not 0 <= int(key) < CONFIG_SIZE:
            raise DatapathError(f"config index {key} out of range")
        self._progs.map("l7g_config").put(_u32(int(key)), _u64(value))

    def get_config(self, key: Config) -> int:
        raw = self._progs.map("l7g_config").get(_u32(int(key)))
        return _u64.from_buffer_copy(raw).value if raw else 0

    def bump_policy_revision(self) -> int:
        """Mark every conntrack verdict as taken under an older policy: each established flow is
        decided again on its next forward packet (see conntrack.h, CT_STALE). Returns the new revision."""
        rev = (self.get_config(Config.POLICY_REV) + 1) & 0xFFFFFFFF or 1
        self.set_config(Config.POLICY_REV, rev)
        return rev

    def set_verdict_events(self, on: bool) -> None:
        self.set_config(Config.VERDICT_EVENTS, 1 if on else 0)

    def set_ct_timeouts(
        self,
        *,
        tcp_syn: float | None = None,
        tcp_established: float | None = None,
        tcp_fin: float | None = None,
        udp: float | None = None,
        other: float | None = None,
    ) -> None:
        """Conntrack lifetimes in seconds (None = leave as is; 0 = the built-in default)."""
        for key, seconds in (
            (Config.CT_TCP_SYN_NS, tcp_syn),
            (Config.CT_TCP_EST_NS, tcp_established),
            (Config.CT_TCP_FIN_NS, tcp_fin),
            (Config.CT_UDP_NS, udp),
            (Config.CT_OTHER_NS, other),
        ):
            if seconds is not None:
                self.set_config(key, int(seconds * 1e9))

    # conntrack -------------------------------------------------------------------------------
    def ct_entries(self) -> list[CtEntry]:
        return [CtEntry.from_bytes(k, v) for k, v in self._progs.map("l7g_ct").items()]

    def ct_flush(self) -> None:
        self._progs.map("l7g_ct").clear()
        self._progs.map("l7g_frags").clear()

    # events ----------------------------------------------------------------------------------
    def poll_events(self, timeout: float = 0.0) -> list[Event]:
        """Events that arrived, waiting up to ``timeout`` seconds for the first one."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            with self._events_lock:
                if self._closed:
                    break
                self._progs.poll_events(max(0, int(remaining * 1000)))
            if self._events or remaining <= 0:
                break
        out, self._events = self._events, []
        return out
