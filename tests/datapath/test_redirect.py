"""Redirect to a local transparent proxy with bpf_sk_assign: TCP and UDP, IPv4 and IPv6."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from bpf.maps import Action, Direction, Event
from bpf.policy_entries import PolicyDecision
from bpf.reasons import DropReason, EventType
from tests.datapath import netlab
from tests.datapath.conftest import IDENTITY, Lab

pytestmark = pytest.mark.root

PROXY_PORT = 15001


class TransparentProxy:
    """In the node netns: TCP listeners (v4, v6) that echo and record getsockname(); UDP sockets
    that record the original destination from IP(V6)_RECVORIGDSTADDR."""

    def __init__(self, netns: str, port: int) -> None:
        self.tcp_orig: list[tuple[str, int]] = []
        self.udp_orig: list[tuple[str, int]] = []
        self.got = threading.Condition()
        self.socks: list[socket.socket] = []
        with netlab.in_netns(netns):
            t4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t4.setsockopt(socket.SOL_IP, netlab.IP_TRANSPARENT, 1)
            t6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            t6.setsockopt(netlab.SOL_IPV6, netlab.IPV6_TRANSPARENT, 1)
            t6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u4.setsockopt(socket.SOL_IP, netlab.IP_TRANSPARENT, 1)
            u4.setsockopt(socket.SOL_IP, netlab.IP_RECVORIGDSTADDR, 1)
            u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            u6.setsockopt(netlab.SOL_IPV6, netlab.IPV6_TRANSPARENT, 1)
            u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            u6.setsockopt(netlab.SOL_IPV6, netlab.IPV6_RECVORIGDSTADDR, 1)
        for s in (t4, t6, u4, u6):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t4.bind(("0.0.0.0", port))
        t6.bind(("::", port))
        u4.bind(("0.0.0.0", port))
        u6.bind(("::", port))
        t4.listen(16)
        t6.listen(16)
        self.socks = [t4, t6, u4, u6]
        self.threads = [threading.Thread(target=self._tcp, args=(t,), daemon=True) for t in (t4, t6)]
        self.threads += [threading.Thread(target=self._udp, args=(u,), daemon=True) for u in (u4, u6)]
        for t in self.threads:
            t.start()

    def _tcp(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                name = conn.getsockname()
                with self.got:
                    self.tcp_orig.append((name[0], name[1]))
                    self.got.notify_all()
                conn.settimeout(2)
                try:
                    data = conn.recv(100)
                    conn.sendall(data)
                except OSError:
                    pass

    def _udp(self, sock: socket.socket) -> None:
        while True:
            try:
                _, anc, _, _ = sock.recvmsg(2048, 256)
            except OSError:
                return
            for level, typ, data in anc:
                if (level, typ) == (socket.SOL_IP, netlab.IP_RECVORIGDSTADDR):
                    port = struct.unpack("!H", data[2:4])[0]
                    orig = (socket.inet_ntop(socket.AF_INET, data[4:8]), port)
                elif (level, typ) == (netlab.SOL_IPV6, netlab.IPV6_RECVORIGDSTADDR):
                    port = struct.unpack("!H", data[2:4])[0]
                    orig = (socket.inet_ntop(socket.AF_INET6, data[8:24]), port)
                else:
                    continue
                with self.got:
                    self.udp_orig.append(orig)
                    self.got.notify_all()

    def wait(self, which: list[tuple[str, int]], item: tuple[str, int], timeout: float = 3.0) -> bool:
        with self.got:
            return self.got.wait_for(lambda: item in which, timeout)

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self.threads:
            t.join(3)


@pytest.fixture
def proxy(lab: Lab) -> Iterator[TransparentProxy]:
    p = TransparentProxy(lab.topo.node, PROXY_PORT)
    try:
        yield p
    finally:
        p.close()


def redirect_a_to_b(lab: Lab, port: int, proxy_port: int) -> None:
    a = lab.pod("a")
    lab.dp.sync_policy(  # type: ignore[attr-defined]
        a.index,
        [
            PolicyDecision(Direction.EGRESS, IDENTITY["b"], 6, port, port, Action.REDIRECT, proxy_port),
            PolicyDecision(Direction.EGRESS, IDENTITY["b"], 17, port, port, Action.REDIRECT, proxy_port),
        ],
    )


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_tcp_redirect_keeps_original_destination(lab: Lab, proxy: TransparentProxy, family: str) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    redirect_a_to_b(lab, 80, PROXY_PORT)
    dst = getattr(b, family)
    assert netlab.tcp_echo(a.name, dst, 80, timeout=2, payload=b"via-proxy")
    assert proxy.wait(proxy.tcp_orig, (dst, 80))
    ct = [e for e in lab.dp.ct_entries() if str(e.dst) == dst and e.dport == 80]  # type: ignore[attr-defined]
    assert ct and ct[0].proxy_port == PROXY_PORT


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_udp_redirect_keeps_original_destination(lab: Lab, proxy: TransparentProxy, family: str) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    redirect_a_to_b(lab, 53, PROXY_PORT)
    dst = getattr(b, family)
    fam = socket.AF_INET6 if family == "ip6" else socket.AF_INET
    with netlab.in_netns(a.name):
        s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.sendto(b"query", (dst, 53))
    finally:
        s.close()
    assert proxy.wait(proxy.udp_orig, (dst, 53))


def test_redirect_fails_closed_without_listener(lab: Lab, proxy: TransparentProxy) -> None:
    a, b = lab.pod("a"), lab.pod("b")
    redirect_a_to_b(lab, 80, PROXY_PORT + 7)
    assert not netlab.tcp_echo(a.name, b.ip4, 80)
    ev = lab.wait_event(lambda e: isinstance(e, Event) and e.type == EventType.DROP and e.dport == 80)
    assert isinstance(ev, Event) and ev.reason == DropReason.PROXY_NOT_FOUND
    assert not proxy.tcp_orig
