"""Make the datapath hold a :class:`DesiredState`, writing only what differs from what its maps hold.

Order: attach new devices, write ipcache entries, policy entries and endpoints (new and changed),
then remove what is no longer wanted (endpoints with their policy, devices, ipcache entries). Nothing
is flushed: an agent that starts against pinned maps of an earlier run adopts them, and an unchanged
policy writes nothing.

The node's proxy ports (``l7g_proxy_ports``) have their own two steps around the services (see
``Agent._commit``): :func:`protect_proxy_ports` before a proxy listens on a new port or a redirect to
it is written, :func:`release_proxy_ports` after the services let go of the ports that left.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from bpf.errors import MapWriteError
from bpf.maps import DeviceKind, EndpointFlags, EndpointValue, IpcacheValue
from bpf.policy_entries import PolicyDecision
from l7.agent.applier import Delta
from l7.plan import DesiredState, EndpointState, IPNetwork


class DatapathLike(Protocol):
    """The part of :class:`bpf.datapath.Datapath` the agent uses."""

    def devices(self) -> dict[int, DeviceKind]: ...
    def attach_endpoint(self, ifindex: int) -> None: ...
    def attach_uplink(self, ifindex: int) -> None: ...
    def detach(self, ifindex: int) -> None: ...
    def set_endpoint(
        self,
        ifindex: int,
        endpoint_id: int,
        identity: int,
        *,
        ingress_enforced: bool = False,
        egress_enforced: bool = False,
        audit: bool = False,
    ) -> None: ...
    def delete_endpoint(self, endpoint_id: int) -> None: ...
    def endpoints(self) -> dict[int, EndpointValue]: ...
    def set_ipcache(self, prefix: IPNetwork, identity: int, endpoint_id: int = 0) -> None: ...
    def delete_ipcache(self, prefix: IPNetwork) -> bool: ...
    def ipcache(self) -> dict[IPNetwork, IpcacheValue]: ...
    def sync_policy(self, endpoint_id: int, decisions: list[PolicyDecision]) -> tuple[int, int]: ...
    def bump_policy_revision(self) -> int: ...
    def proxy_ports(self) -> set[tuple[int, int]]: ...
    def set_proxy_port(self, port: int, proto: int) -> None: ...
    def delete_proxy_port(self, port: int, proto: int) -> bool: ...


@dataclass
class SyncStats:
    attached: int = 0
    detached: int = 0
    endpoints_written: int = 0
    endpoints_deleted: int = 0
    ipcache_written: int = 0
    ipcache_deleted: int = 0
    policy_written: int = 0
    policy_deleted: int = 0
    failed: int = 0  # writes the kernel refused (a full map): those entries stay absent (deny)
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return (
            self.attached
            + self.detached
            + self.endpoints_written
            + self.endpoints_deleted
            + self.ipcache_written
            + self.ipcache_deleted
            + self.policy_written
            + self.policy_deleted
        )

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


def _write_ipcache(
    dp: DatapathLike, stats: SyncStats, net: IPNetwork, identity: int, endpoint_id: int
) -> None:
    try:
        dp.set_ipcache(net, identity, endpoint_id)
    except MapWriteError as exc:  # the address keeps its old identity or none (world): never more
        stats.failed += 1
        stats.notes.append(f"ipcache {net}: {exc}")
        return
    stats.ipcache_written += 1


def _write_endpoint(dp: DatapathLike, stats: SyncStats, endpoint_id: int, ep: EndpointState) -> None:
    dp.set_endpoint(
        ep.ifindex,
        endpoint_id,
        ep.identity,
        ingress_enforced=ep.ingress_enforced,
        egress_enforced=ep.egress_enforced,
        audit=ep.audit,
    )
    stats.endpoints_written += 1


def _write_policy(
    dp: DatapathLike, stats: SyncStats, endpoint_id: int, decisions: tuple[PolicyDecision, ...]
) -> None:
    try:
        written, deleted = dp.sync_policy(endpoint_id, list(decisions))
    except MapWriteError as exc:  # what was written stays; what was not is absent (denied)
        stats.failed += 1
        stats.notes.append(f"policy of endpoint {endpoint_id}: {exc}")
        return
    stats.policy_written += written
    stats.policy_deleted += deleted


_ENFORCE_MASK = int(EndpointFlags.INGRESS_ENFORCED | EndpointFlags.EGRESS_ENFORCED | EndpointFlags.AUDIT)


def sync(dp: DatapathLike, desired: DesiredState, uplink: int | None = None) -> SyncStats:
    stats = SyncStats()
    devices = dp.devices()
    wanted_devs = {ep.ifindex for ep in desired.endpoints.values() if ep.ifindex > 0}  # host: none
    for ifindex in sorted(wanted_devs):
        if devices.get(ifindex) != DeviceKind.ENDPOINT:
            dp.attach_endpoint(ifindex)
            stats.attached += 1
    if uplink is not None and devices.get(uplink) != DeviceKind.UPLINK:
        dp.attach_uplink(uplink)
        stats.attached += 1

    have_ip = dp.ipcache()
    for net, want in desired.ipcache.items():
        cur = have_ip.get(net)
        if cur is None or (cur.identity, cur.endpoint_id) != (want.identity, want.endpoint_id):
            _write_ipcache(dp, stats, net, want.identity, want.endpoint_id)

    for endpoint_id, decisions in sorted(desired.policy.items()):
        _write_policy(dp, stats, endpoint_id, decisions)

    have_eps = dp.endpoints()
    for endpoint_id, ep in sorted(desired.endpoints.items()):
        flags = (
            (EndpointFlags.INGRESS_ENFORCED if ep.ingress_enforced else 0)
            | (EndpointFlags.EGRESS_ENFORCED if ep.egress_enforced else 0)
            | (EndpointFlags.AUDIT if ep.audit else 0)
        )
        have = have_eps.get(endpoint_id)
        if (
            have is None
            or have.identity != ep.identity
            or have.ifindex != ep.ifindex
            or have.flags & _ENFORCE_MASK != int(flags)
        ):
            _write_endpoint(dp, stats, endpoint_id, ep)

    for endpoint_id in sorted(set(have_eps) - set(desired.endpoints)):
        dp.delete_endpoint(endpoint_id)
        stats.endpoints_deleted += 1
    for ifindex, kind in sorted(devices.items()):
        if kind == DeviceKind.ENDPOINT and ifindex not in wanted_devs:
            dp.detach(ifindex)
            stats.detached += 1
    for net in sorted(set(have_ip) - set(desired.ipcache), key=str):
        dp.delete_ipcache(net)
        stats.ipcache_deleted += 1
    if stats.policy_written or stats.policy_deleted or stats.endpoints_written or stats.endpoints_deleted:
        # What is allowed changed: established flows are decided again under the new policy. An
        # ipcache-only change (an FQDN address learned or expired, a peer appearing) changes who an
        # address is, not what is allowed: established connections keep their verdict, as in Cilium.
        dp.bump_policy_revision()
    return stats


def sync_delta(dp: DatapathLike, delta: Delta) -> SyncStats:
    """Write one :class:`~l7.agent.applier.Delta` (same order as :func:`sync`: devices, ipcache,
    policy, endpoints, then removals). Reads only the policy entries of the endpoints it writes."""
    stats = SyncStats()
    devices = dp.devices() if delta.endpoints or delta.endpoints_gone else {}
    for ep in delta.endpoints.values():
        if ep.ifindex > 0 and devices.get(ep.ifindex) != DeviceKind.ENDPOINT:  # the host has no device
            dp.attach_endpoint(ep.ifindex)
            devices[ep.ifindex] = DeviceKind.ENDPOINT
            stats.attached += 1
    for net, want in delta.ipcache.items():
        _write_ipcache(dp, stats, net, want.identity, want.endpoint_id)
    for endpoint_id, decisions in sorted(delta.policy.items()):
        _write_policy(dp, stats, endpoint_id, decisions)
    for endpoint_id, ep in sorted(delta.endpoints.items()):
        _write_endpoint(dp, stats, endpoint_id, ep)
    kept = {ep.ifindex for ep in delta.endpoints.values()}
    for endpoint_id in sorted(delta.endpoints_gone - set(delta.endpoints)):
        dp.delete_endpoint(endpoint_id)
        stats.endpoints_deleted += 1
        if devices.get(endpoint_id) == DeviceKind.ENDPOINT and endpoint_id not in kept:
            dp.detach(endpoint_id)  # endpoint ids are the veth's ifindex
            stats.detached += 1
    for net in sorted(delta.ipcache_gone, key=str):
        dp.delete_ipcache(net)
        stats.ipcache_deleted += 1
    if stats.policy_written or stats.policy_deleted or stats.endpoints_written or stats.endpoints_deleted:
        dp.bump_policy_revision()  # what is allowed changed (see sync)
    return stats


def protect_proxy_ports(dp: DatapathLike, wanted: AbstractSet[tuple[int, int]]) -> int:
    """Write the (port, protocol) pairs of ``wanted`` the datapath does not protect yet; returns how many.
    Call it before a proxy listens on a new port and before a redirect to it is written. A refused
    write raises :class:`~bpf.errors.MapWriteError`: the caller must not go on to open the port."""
    missing = sorted(wanted - dp.proxy_ports())
    for port, proto in missing:
        dp.set_proxy_port(port, proto)
    return len(missing)


def release_proxy_ports(dp: DatapathLike, wanted: AbstractSet[tuple[int, int]]) -> int:
    """Delete the protected pairs not in ``wanted``; returns how many. Call it only after the proxies
    stopped listening there (after the services' commit)."""
    extra = sorted(dp.proxy_ports() - wanted)
    for port, proto in extra:
        dp.delete_proxy_port(port, proto)
    return len(extra)
