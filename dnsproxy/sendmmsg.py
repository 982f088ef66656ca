"""Many datagrams in one system call: ``sendmmsg(2)`` through ctypes (Python has no binding).

A :class:`MessageBatch` gathers datagrams — each with an optional destination (a packed ``sockaddr``)
and optional control messages (packed ``cmsghdr``\\ s) — into one preallocated buffer laid out as the
kernel reads it (an ``mmsghdr`` array, then per message its ``iovec``, name, control and payload), and
:meth:`MessageBatch.send` hands them to the kernel at once. The call releases the GIL. A message the
kernel refuses (e.g. no route) is skipped and reported; the rest are still sent.

Linux, 64-bit only (the layout below is x86-64/aarch64's); :func:`available` says whether it is usable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import queue
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

MAX_MESSAGES = 64
"""Messages per batch (a full batch is sent before the next one is gathered)."""
AREA = 256 * 1024
"""Bytes for a batch's iovecs, names, control messages and payloads (by default; a datagram too large
for an empty batch is the caller's to send alone)."""

_MMSGHDR = struct.Struct("@PI4xPQPQi4xI4x")  # msghdr (56 bytes) + msg_len (+ padding): 64 bytes
_IOVEC = struct.Struct("@PQ")
_HEADER_SIZE = 64
_SLOT_OVERHEAD = _IOVEC.size + 32 + 48  # iovec, the largest name (sockaddr_in6 28, rounded), control


Refused = list[tuple[int, int]]
"""(index in the batch, errno) of the datagrams the kernel refused."""


@functools.cache
def _load() -> Any:
    """libc's ``sendmmsg`` (raises ``OSError``/``AttributeError`` when there is none)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    function = libc.sendmmsg
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def available() -> bool:
    """Whether ``sendmmsg`` can be used here (Linux, 64-bit, libc has it)."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        return False
    try:
        _load()
    except (OSError, AttributeError):
        return False
    return True


def _round8(value: int) -> int:
    return (value + 7) & ~7


class MessageBatch:
    """Datagrams waiting to be sent through one socket with one ``sendmmsg`` call."""

    def __init__(self, area: int = AREA) -> None:
        self._sendmmsg = _load()
        self._buffer = ctypes.create_string_buffer(MAX_MESSAGES * _HEADER_SIZE + area)
        self._base = ctypes.addressof(self._buffer)
        self._view = memoryview(self._buffer).cast("B")
        self._count = 0
        self._used = MAX_MESSAGES * _HEADER_SIZE

    def __len__(self) -> int:
        return self._count

    def fits(self, size: int) -> bool:
        """Whether a payload of ``size`` bytes fits in this batch now (else send the batch first)."""
        return self._count < MAX_MESSAGES and self._used + _SLOT_OVERHEAD + _round8(size) <= len(self._view)

    def add(self, payload: bytes, name: bytes = b"", control: bytes = b"") -> None:
        """Add one datagram (:meth:`fits` must be true): ``name`` is the packed destination
        (empty on a connected socket), ``control`` the packed control messages."""
        view, base = self._view, self._base
        iov = self._used
        at = iov + _IOVEC.size
        name_at = at
        view[at : at + len(name)] = name
        at = _round8(at + len(name))
        control_at = at
        view[at : at + len(control)] = control
        at = _round8(at + len(control))
        size = len(payload)
        view[at : at + size] = payload
        _IOVEC.pack_into(view, iov, base + at, size)
        _MMSGHDR.pack_into(
            view,
            self._count * _HEADER_SIZE,
            base + name_at if name else 0,
            len(name),
            base + iov,
            1,
            base + control_at if control else 0,
            len(control),
            0,
            0,
        )
        self._used = _round8(at + size)
        self._count += 1

    def send(self, fd: int) -> Refused:
        """Send every datagram gathered (then the batch is empty). Returns the (index, errno) of those
        the kernel refused: each is skipped and the rest still sent, except after a full socket buffer
        (``EAGAIN``/``ENOBUFS``), which fails the rest."""
        sendmmsg = self._sendmmsg
        count, start = self._count, 0
        base = self._base
        failed: Refused = []
        while start < count:
            done = sendmmsg(fd, base + start * _HEADER_SIZE, count - start, 0)
            if done > 0:
                start += done
                continue
            error = ctypes.get_errno()
            if error == errno.EINTR:
                continue
            if error in (errno.EAGAIN, errno.ENOBUFS):
                failed.extend((index, error) for index in range(start, count))
                break
            failed.append((start, error))  # the kernel refused this one message: skip it
            start += 1
        self._count = 0
        self._used = MAX_MESSAGES * _HEADER_SIZE
        return failed


INLINE_BELOW = 8
"""Batches smaller than this are sent by the caller's thread (a thread hand-off costs more than it
saves on a few datagrams, and adds latency when the load is light)."""
MAX_QUEUED_BATCHES = 4
"""Batches handed to the send thread and not yet sent; beyond this the caller sends (backpressure)."""


class SendThread:
    """Sends batches off the event loop's thread: the kernel's work for a datagram (through a veth
    into another namespace, the receiver's side included) is most of its cost, and ``sendmmsg``
    releases the GIL, so that work overlaps the event loop's parsing and deciding on a second core."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[MessageBatch, socket.socket, Callable[[Refused], None]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.queued = 0
        """Batches handed over and not yet sent (read by the loop; changed under the GIL)."""

    def submit(self, batch: MessageBatch, sock: socket.socket, done: Callable[[Refused], None]) -> bool:
        """Have ``batch`` sent through ``sock``; ``done`` is then called *in the send thread* with what
        the kernel refused, and the batch is empty again. False: too many batches are waiting (send it
        yourself)."""
        if self.queued >= MAX_QUEUED_BATCHES:
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dns-send", daemon=True)
            self._thread.start()
        self.queued += 1
        self._jobs.put((batch, sock, done))
        return True

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch, sock, done = job
            try:
                refused = batch.send(sock.fileno())
            finally:
                self.queued -= 1
            done(refused)

    def close(self, timeout: float = 2.0) -> None:
        """Send what was handed over, then stop the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None


class Outbox:
    """The datagrams waiting to leave through one socket: gathered in a batch; :meth:`flush` sends a
    few inline and hands larger batches to a :class:`SendThread` (a fresh batch takes the place of one
    in flight)."""

    def __init__(self, sock: socket.socket, sender: SendThread | None, area: int = AREA) -> None:
        self.sock = sock
        self._area = area
        self.batch = MessageBatch(area)
        self._sender = sender
        self._spare: list[MessageBatch] = []

    def flush(self, done: Callable[[Refused], None]) -> None:
        """Send the batch; ``done`` gets what the kernel refused (from the send thread, when the batch
        went there)."""
        batch = self.batch
        if not len(batch):
            return
        sender = self._sender
        if sender is not None and len(batch) >= INLINE_BELOW:
            spare = self._spare

            def sent(refused: Refused) -> None:
                spare.append(batch)  # list.append is atomic: the loop takes it back with pop()
                done(refused)

            if sender.submit(batch, self.sock, sent):
                self.batch = spare.pop() if spare else MessageBatch(self._area)
                return
        done(batch.send(self.sock.fileno()))
