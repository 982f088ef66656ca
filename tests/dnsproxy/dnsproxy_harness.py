"""Test harness for the DNS proxy: private network namespaces, an in-process name server, DNS clients.

Network namespaces are per thread: :func:`run_in_netns` runs a coroutine on an event loop in a thread
that entered the namespace first, so every socket the test, the proxy and the name server open lives
there. Namespaces are named ``l7gd-<random>``; only addresses inside them are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dnslib

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def new_name(kind: str = "") -> str:
    return f"l7gd-{kind}{secrets.token_hex(3)}"


@contextlib.contextmanager
def netns(name: str | None = None) -> Iterator[str]:
    """A fresh network namespace with loopback up; deleted on exit."""
    name = name or new_name()
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def run_in_netns(name: str, work: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run ``work()`` on a new event loop in a thread inside namespace ``name``."""
    outcome: dict[str, Any] = {}

    def main() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            outcome["value"] = asyncio.run(work())  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=main, name=f"netns-{name}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"the test in {name} did not finish in {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- an in-process name server -------------------------------------------------------------------------

Behaviour = Callable[[dnslib.DNSRecord], Awaitable[list[bytes]]]


def answer(request: dnslib.DNSRecord, *records: str, rcode: int = 0) -> bytes:
    """A reply to ``request`` with zone-file ``records`` in the answer section."""
    reply = request.reply()
    reply.header.rcode = rcode
    for text in records:
        for rr in dnslib.RR.fromZone(text):
            reply.add_answer(rr)
    return bytes(reply.pack())


@dataclass
class NameServer:
    """UDP and TCP on 127.0.0.1 port 0 (one port for both); ``behaviour`` returns the datagrams to send."""

    behaviour: Behaviour
    host: str = "127.0.0.1"
    seen: list[dnslib.DNSRecord] = field(default_factory=list)
    seen_from: list[tuple[str, int]] = field(default_factory=list)
    port: int = 0
    spoof_from: list[bytes] = field(default_factory=list)
    """Datagrams to send from a *different* port before the real answer (the wrong-source case)."""
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> NameServer:
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                task = loop.create_task(server._answer_udp(data, addr))
                server._tasks.add(task)
                task.add_done_callback(server._tasks.discard)

        transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host, 0))
        self._udp = transport
        self.port = transport.get_extra_info("sockname")[1]
        self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port)
        return self

    async def _answer_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        request = dnslib.DNSRecord.parse(data)
        self.seen.append(request)
        self.seen_from.append(addr)
        replies = await self.behaviour(request)
        for spoof in self.spoof_from:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                other.bind((self.host, 0))
                other.sendto(spoof, addr)
        assert self._udp is not None
        for reply in replies:
            self._udp.sendto(reply, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                request = dnslib.DNSRecord.parse(await reader.readexactly(length))
                self.seen.append(request)
                for reply in await self.behaviour(request):
                    writer.write(len(reply).to_bytes(2, "big") + reply)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()


# -- clients -------------------------------------------------------------------------------------------


def query(name: str, qtype: str = "A", ident: int | None = None) -> dnslib.DNSRecord:
    q = dnslib.DNSRecord.question(name, qtype)
    if ident is not None:
        q.header.id = ident
    return q


async def udp_ask(
    message: bytes, server: tuple[str, int], source: str = "127.0.0.2", timeout: float = 5.0
) -> tuple[bytes, tuple[str, int]] | None:
    """Send one datagram from ``source``; the first datagram back and where it came from, or None."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_sendto(sock, message, server)
        try:
            async with asyncio.timeout(timeout):
                data, addr = await loop.sock_recvfrom(sock, 65535)
        except TimeoutError:
            return None
        return data, addr


async def tcp_ask(
    messages: list[bytes], server: tuple[str, int], source: str = "127.0.0.2", timeout: float = 5.0
) -> list[bytes]:
    """Send ``messages`` on one TCP connection (pipelined); the replies in arrival order."""
    reader, writer = await asyncio.open_connection(server[0], server[1], local_addr=(source, 0))
    try:
        writer.write(b"".join(len(m).to_bytes(2, "big") + m for m in messages))
        replies = []
        async with asyncio.timeout(timeout):
            for _ in messages:
                length = int.from_bytes(await reader.readexactly(2), "big")
                replies.append(await reader.readexactly(length))
        return replies
    finally:
        writer.close()


PROXY_PORT = 15053
CLIENT = "127.0.0.2"


@contextlib.contextmanager
def loopback_lab() -> Iterator[str]:
    """A namespace where UDP/TCP from 127.0.0.2 is redirected (nft tproxy) to the proxy port: clients
    bind 127.0.0.2 and ask name servers on 127.0.0.1 directly, the proxy sees the original destination."""
    with netns() as name:
        sh("ip", "netns", "exec", name, "nft", "-f", "-", stdin=f"""
table ip l7gd {{
  chain pre {{
    type filter hook prerouting priority mangle; policy accept;
    ip saddr {CLIENT} meta l4proto {{ tcp, udp }} meta mark set 0x1 tproxy to :{PROXY_PORT} accept
  }}
}}
""")
        sh("ip", "-n", name, "rule", "add", "fwmark", "1", "lookup", "100")
        sh("ip", "-n", name, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        yield name
