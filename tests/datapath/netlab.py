"""A tiny lab for the datapath tests: a node netns, pod netns with veths, a world netns.

Everything lives in namespaces named ``l7gdp-<random>-*`` with addresses from 10.213.0.0/16 and
fd00:213::/64 only; traffic goes only to those addresses. Sockets are created in a namespace by
switching the calling thread (``setns``) for the duration of a ``with in_netns(...)`` block.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74
IPV6_TRANSPARENT = 75
SOL_IPV6 = 41


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block (this thread only) in network namespace ``name``."""
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(target)
        os.close(orig)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Pod:
    name: str  # netns name
    index: int
    ip4: str
    ip6: str
    node_ip4: str
    node_ip6: str
    host_if: str  # host-side veth name (in the node netns)
    ifindex: int = 0


@dataclass
class Topology:
    prefix: str
    node: str
    world: str
    pods: dict[str, Pod] = field(default_factory=dict)
    uplink: str = "upl0"
    uplink_ifindex: int = 0
    world_ip4: str = "10.213.100.2"
    world_ip6: str = "fd00:213::100:2"

    @property
    def namespaces(self) -> list[str]:
        return [self.node, self.world, *(p.name for p in self.pods.values())]


def build(prefix: str, pod_names: tuple[str, ...] = ("a", "b", "c")) -> Topology:
    node, world = f"{prefix}-node", f"{prefix}-world"
    topo = Topology(prefix=prefix, node=node, world=world)
    sh("ip", "netns", "add", node)
    for ns in (node,):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    for i, pn in enumerate(pod_names, start=1):
        pod = Pod(
            name=f"{prefix}-{pn}",
            index=i,
            ip4=f"10.213.{i}.2",
            ip6=f"fd00:213::{i}:2",
            node_ip4=f"10.213.{i}.1",
            node_ip6=f"fd00:213::{i}:1",
            host_if=f"lxc{pn}",
        )
        sh("ip", "netns", "add", pod.name)
        sh(
            "ip",
            "-n",
            node,
            "link",
            "add",
            pod.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name,
        )
        sh("ip", "-n", pod.name, "link", "set", "lo", "up")
        sh("ip", "-n", pod.name, "link", "set", "eth0", "up")
        sh("ip", "-n", node, "link", "set", pod.host_if, "up")
        sh("ip", "-n", pod.name, "addr", "add", f"{pod.ip4}/24", "dev", "eth0")
        sh("ip", "-n", pod.name, "addr", "add", f"{pod.ip6}/112", "dev", "eth0", "nodad")
        sh("ip", "-n", node, "addr", "add", f"{pod.node_ip4}/24", "dev", pod.host_if)
        sh("ip", "-n", node, "addr", "add", f"{pod.node_ip6}/112", "dev", pod.host_if, "nodad")
        sh("ip", "-n", pod.name, "route", "add", "default", "via", pod.node_ip4)
        sh("ip", "-n", pod.name, "-6", "route", "add", "default", "via", pod.node_ip6)
        topo.pods[pn] = pod
    sh("ip", "netns", "add", world)
    sh("ip", "-n", world, "link", "set", "lo", "up")
    sh("ip", "-n", node, "link", "add", topo.uplink, "type", "veth", "peer", "name", "eth0", "netns", world)
    sh("ip", "-n", world, "link", "set", "eth0", "up")
    sh("ip", "-n", node, "link", "set", topo.uplink, "up")
    sh("ip", "-n", world, "addr", "add", f"{topo.world_ip4}/24", "dev", "eth0")
    sh("ip", "-n", world, "addr", "add", f"{topo.world_ip6}/112", "dev", "eth0", "nodad")
    sh("ip", "-n", node, "addr", "add", "10.213.100.1/24", "dev", topo.uplink)
    sh("ip", "-n", node, "addr", "add", "fd00:213::100:1/112", "dev", topo.uplink, "nodad")
    sh("ip", "-n", world, "route", "add", "10.213.0.0/16", "via", "10.213.100.1")
    sh("ip", "-n", world, "-6", "route", "add", "fd00:213::/64", "via", "fd00:213::100:1")
    with in_netns(node):
        for pod in topo.pods.values():
            pod.ifindex = socket.if_nametoindex(pod.host_if)
        topo.uplink_ifindex = socket.if_nametoindex(topo.uplink)
    wait_no_tentative(topo.namespaces)
    return topo


def wait_no_tentative(namespaces: Iterable[str], timeout: float = 10.0) -> None:
    """Wait until no IPv6 address is tentative (link-local DAD after link up, ~1-2 s).

    The global addresses are added with ``nodad``, but every link-local address still runs DAD;
    until it finishes, the first IPv6 connection through the node can stall for up to a second.
    """
    deadline = time.monotonic() + timeout
    pending = list(namespaces)
    while pending:
        pending = [
            ns
            for ns in pending
            if subprocess.run(
                ["ip", "-n", ns, "-6", "addr", "show", "tentative"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        ]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"IPv6 addresses still tentative in {pending}")
        if pending:
            time.sleep(0.05)


def teardown(topo: Topology) -> None:
    for ns in topo.namespaces:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


class EchoServer:
    """TCP and UDP echo on dual-stack sockets in one namespace, served by a thread."""

    def __init__(self, netns: str, tcp_ports: tuple[int, ...], udp_ports: tuple[int, ...]) -> None:
        self._sel = selectors.DefaultSelector()
        self._stop_r, self._stop_w = os.pipe()
        self._sel.register(self._stop_r, selectors.EVENT_READ, ("stop", None))
        with in_netns(netns):
            for port in tcp_ports:
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::", port))
                s.listen(64)
                s.setblocking(False)
                self._sel.register(s, selectors.EVENT_READ, ("listen", None))
            for port in udp_ports:
                u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                u.bind(("::", port))
                u.setblocking(False)
                self._sel.register(u, selectors.EVENT_READ, ("udp", None))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                kind, _ = key.data
                sock = key.fileobj
                if kind == "stop":
                    return
                assert isinstance(sock, socket.socket)
                if kind == "listen":
                    try:
                        conn, _ = sock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self._sel.register(conn, selectors.EVENT_READ, ("conn", None))
                elif kind == "udp":
                    try:
                        data, addr = sock.recvfrom(65535)
                        sock.sendto(data, addr)
                    except OSError:
                        continue
                else:
                    try:
                        data = sock.recv(65535)
                    except OSError:
                        data = b""
                    if not data:
                        self._sel.unregister(sock)
                        sock.close()
                        continue
                    with contextlib.suppress(OSError):
                        sock.sendall(data)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        self._sel.close()


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def tcp_echo(netns: str, ip: str, port: int, timeout: float = 0.6, payload: bytes = b"hello") -> bool:
    """Connect from ``netns`` to ip:port, send, expect the echo. False on timeout/refusal."""
    with in_netns(netns):
        s = socket.socket(_family(ip), socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((ip, port))
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65535)
            if not chunk:
                break
            got += chunk
        return got == payload
    except OSError:
        return False
    finally:
        s.close()


def udp_echo(netns: str, ip: str, port: int, timeout: float = 0.6, payload: bytes = b"ping") -> bool:
    with in_netns(netns):
        s = socket.socket(_family(ip), socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(payload, (ip, port))
        data, _ = s.recvfrom(65535)
        return data == payload
    except OSError:
        return False
    finally:
        s.close()
