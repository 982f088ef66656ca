"""Network namespaces: create and delete them, run ``ip`` batches inside, set sysctls, open sockets inside.

Everything happens inside the lab's own namespaces: veth pairs are created in a lab namespace with the
peer placed directly into another lab namespace, so the root namespace's interfaces, routes and rules are
never touched. The command lines are built by pure functions (``*_commands``) from the plan.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from l7.lab.addressing import (
    FABRIC_BRIDGE,
    GATEWAY_V4,
    GATEWAY_V6,
    NODE_ROUTER_IF,
    NODE_UPLINK,
    NodePlan,
    Plan,
    PodPlan,
    WorldPlan,
)
from l7.lab.errors import CommandError, LabError

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def run(argv: list[str], stdin: str | None = None, timeout: float = 30.0) -> str:
    """Run a command; raise :class:`CommandError` if it fails."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(argv, -1, str(exc)) from exc
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr)
    return proc.stdout


def ip_batch(netns: str | None, lines: list[str]) -> None:
    """Run ``ip`` commands (one per line, without the leading ``ip``) in one process, inside ``netns``."""
    if not lines:
        return
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    try:
        run(argv, stdin="\n".join(lines) + "\n")
    except CommandError as exc:
        raise CommandError([*argv, f"<<{len(lines)} commands>>"], exc.returncode, exc.stderr) from None


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add(names: list[str]) -> None:
    ip_batch(None, [f"netns add {name}" for name in names])


def delete(name: str) -> bool:
    """Delete a namespace if it exists; ``True`` if it did."""
    if not exists(name):
        return False
    try:
        run(["ip", "netns", "del", name])
    except CommandError:
        if exists(name):
            raise
    return True


def pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name``."""
    if not exists(name):
        return []
    return [int(p) for p in run(["ip", "netns", "pids", name]).split()]


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a thread that has entered the namespace ``name``; sockets it opens stay there."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread below)
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def sysctl(name: str, values: dict[str, str]) -> None:
    """Write ``net.*`` sysctls inside the namespace ``name``."""

    def write() -> None:
        for key, value in values.items():
            Path("/proc/sys", *key.split(".")).write_text(value)

    try:
        in_netns(name, write)
    except OSError as exc:
        raise LabError(f"sysctl in {name}: {exc}") from exc


# Set in every lab namespace right after it is created, before any interface exists: no DAD anywhere.
BASE_SYSCTLS = {
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}
ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.default.forwarding": "1",
}


def fabric_commands(plan: Plan) -> list[str]:
    """The fabric: a bridge joining the nodes' uplinks, a routed veth per world host."""
    br = FABRIC_BRIDGE
    lines = [
        "link set lo up",
        f"link add {br} type bridge",
        f"link set {br} up",
        f"addr add {plan.fabric_v4}/24 dev {br}",
        f"addr add {plan.fabric_v6}/64 dev {br} nodad",
    ]
    for node in plan.nodes:
        lines += [
            f"link add {node.fabric_if} type veth peer name {NODE_UPLINK} netns {node.netns}",
            f"link set {node.fabric_if} master {br} up",
            f"route add {node.pod_cidr_v4} via {node.uplink_v4}",
            f"route add {node.pod_cidr_v6} via {node.uplink_v6}",
        ]
    for world in plan.worlds:
        lines += [
            f"link add {world.fabric_if} type veth peer name eth0 netns {world.netns}",
            f"link set {world.fabric_if} up",
            f"addr add {GATEWAY_V4}/32 dev {world.fabric_if}",
            f"addr add {GATEWAY_V6}/64 dev {world.fabric_if} nodad",
        ]
        lines += [f"route add {ip}/32 dev {world.fabric_if}" for ip in world.v4]
        lines += [f"route add {ip}/128 dev {world.fabric_if}" for ip in world.v6]
    return lines


def node_commands(plan: Plan, node: NodePlan) -> list[str]:
    """A node: uplink to the fabric, a router address, a veth per local pod, routes to the other nodes."""
    lines = [
        "link set lo up",
        f"link set {NODE_UPLINK} up",
        f"addr add {node.uplink_v4}/24 dev {NODE_UPLINK}",
        f"addr add {node.uplink_v6}/64 dev {NODE_UPLINK} nodad",
        f"addr add {node.router_v4}/32 dev {NODE_ROUTER_IF}",
        f"addr add {node.router_v6}/128 dev {NODE_ROUTER_IF} nodad",
    ]
    for other in plan.nodes:
        if other.name != node.name:
            lines += [
                f"route add {other.pod_cidr_v4} via {other.uplink_v4}",
                f"route add {other.pod_cidr_v6} via {other.uplink_v6}",
            ]
    lines += [
        f"route add default via {plan.fabric_v4}",
        f"route add default via {plan.fabric_v6}",
    ]
    for pod in plan.pods:
        if pod.node != node.name:
            continue
        lines += [
            f"link add {pod.host_if} type veth peer name eth0 netns {pod.netns}",
            f"link set {pod.host_if} up",
            f"addr add {GATEWAY_V6}/64 dev {pod.host_if} nodad",
            f"route add {pod.v4}/32 dev {pod.host_if} src {node.router_v4}",
        ]
        if pod.v6 is not None:
            lines.append(f"route add {pod.v6}/128 dev {pod.host_if} src {node.router_v6}")
    return lines


def pod_commands(plan: Plan, pod: PodPlan) -> list[str]:
    """A pod: ``eth0`` with a /32 (and /128), default routes via the node."""
    router = plan.node(pod.node).router_v4
    lines = [
        "link set lo up",
        "link set eth0 up",
        f"addr add {pod.v4}/32 dev eth0",
        f"route add {router}/32 dev eth0 scope link",
        f"route add default via {router} dev eth0 src {pod.v4}",
    ]
    if pod.v6 is not None:
        lines += [
            f"addr add {pod.v6}/128 dev eth0 nodad",
            f"route add default via {GATEWAY_V6} dev eth0 src {pod.v6}",
        ]
    return lines


def world_commands(world: WorldPlan) -> list[str]:
    """A world host: its addresses on ``eth0``, everything routed via the fabric."""
    lines = ["link set lo up", "link set eth0 up"]
    lines += [f"addr add {ip}/32 dev eth0" for ip in world.v4]
    lines += [f"addr add {ip}/128 dev eth0 nodad" for ip in world.v6]
    if world.v4:
        lines += [
            f"route add {GATEWAY_V4}/32 dev eth0 scope link",
            f"route add default via {GATEWAY_V4} dev eth0 src {world.v4[0]}",
        ]
    if world.v6:
        lines.append(f"route add default via {GATEWAY_V6} dev eth0 src {world.v6[0]}")
    return lines


def write_etc(netns: str, files: dict[str, str]) -> Path:
    """``/etc/netns/NETNS/FILE`` (``ip netns exec`` bind-mounts them over ``/etc/FILE``)."""
    directory = ETC_NETNS / netns
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def remove_etc(netns: str) -> bool:
    directory = ETC_NETNS / netns
    if not directory.exists():
        return False
    shutil.rmtree(directory)
    return True
