"""Readiness probes, run from inside a lab namespace: a TCP connect, a DNS query. Each probe is one
attempt; :func:`wait_all` polls the pending ones until all pass or the deadline expires."""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from l7.lab import netns
from l7.lab.errors import LabError


@dataclass(frozen=True)
class Probe:
    label: str
    attempt: Callable[[], bool]
    alive: Callable[[], bool] = lambda: True  # the process behind the probe; dead → fail at once
    details: Callable[[], str] = lambda: ""


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def tcp(ns: str, ip: str, port: int, timeout: float = 0.5) -> bool:
    def attempt() -> bool:
        with socket.socket(_family(ip), socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect((ip, port))
            except OSError:
                return False
            return True

    return netns.in_netns(ns, attempt)


def dns_query(name: str, qid: int) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split(".")) + b"\0"
    return header + qname + struct.pack("!HH", 1, 1)


def dns(ns: str, server: str, name: str, timeout: float = 0.5) -> bool:
    """One A query for ``name``; ready when any answer (with our id and NOERROR) comes back."""

    def attempt() -> bool:
        qid = random.randrange(1 << 16)
        with socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.sendto(dns_query(name, qid), (server, 53))
                data = sock.recv(4096)
            except OSError:
                return False
        if len(data) < 12:
            return False
        rid, flags, _, ancount = struct.unpack("!HHHH", data[:8])
        return bool(rid == qid and flags & 0x000F == 0 and ancount > 0)

    return netns.in_netns(ns, attempt)


def wait_all(probes: list[Probe], timeout: float, interval: float = 0.02) -> float:
    """Poll until every probe passes; return the seconds it took. Raise :class:`LabError` on a dead process
    or at the deadline, naming what is not ready."""
    start = time.monotonic()
    deadline = start + timeout
    pending = list(probes)
    while pending:
        for probe in list(pending):
            if probe.attempt():
                pending.remove(probe)
            elif not probe.alive():
                raise LabError(f"{probe.label}: the process exited\n{probe.details()}")
        if not pending:
            break
        if time.monotonic() > deadline:
            names = ", ".join(p.label for p in pending)
            detail = "\n".join(p.details() for p in pending)
            raise LabError(f"not ready after {timeout:.0f}s: {names}\n{detail}")
        time.sleep(interval)
    return time.monotonic() - start
