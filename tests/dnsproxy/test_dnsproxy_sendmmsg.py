"""``sendmmsg`` batches: every datagram of a batch arrives, in order, with its own destination; one the
kernel refuses is reported and skipped while the rest still go; batches handed to the send thread
arrive too. Loopback only."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from dnsproxy.sendmmsg import INLINE_BELOW, MessageBatch, Outbox, Refused, SendThread, available


def test_sendmmsg_is_available_here() -> None:
    """l7gate runs on 64-bit Linux: the batched path must be the one under test (never skipped)."""
    assert available()


def _name(address: tuple[str, int]) -> bytes:
    return (
        struct.pack("@H", socket.AF_INET)
        + address[1].to_bytes(2, "big")
        + socket.inet_aton(address[0])
        + bytes(8)
    )


@pytest.fixture
def sinks() -> Iterator[list[socket.socket]]:
    made = []
    try:
        for _ in range(2):
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            made.append(sink)
            sink.bind(("127.0.0.1", 0))
            sink.settimeout(5)
        yield made
    finally:
        for sink in made:
            sink.close()


def test_a_batch_delivers_each_datagram_to_its_destination_in_order(sinks: list[socket.socket]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        batch = MessageBatch()
        for i in range(10):
            assert batch.fits(100)
            batch.add(f"datagram {i}".encode() * 5, _name(sinks[i % 2].getsockname()))
        assert len(batch) == 10
        assert batch.send(sender.fileno()) == []
        assert len(batch) == 0
        got = [[sinks[s].recv(4096) for _ in range(5)] for s in range(2)]
        assert got[0] == [f"datagram {i}".encode() * 5 for i in range(0, 10, 2)]
        assert got[1] == [f"datagram {i}".encode() * 5 for i in range(1, 10, 2)]
        # empty again: the next batch starts from scratch
        batch.add(b"again", _name(sinks[0].getsockname()))
        assert batch.send(sender.fileno()) == []
        assert sinks[0].recv(4096) == b"again"


def test_a_refused_datagram_is_reported_and_the_rest_still_sent(sinks: list[socket.socket]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        batch = MessageBatch()
        target = sinks[0].getsockname()
        for i in range(6):
            batch.add(b"%d" % i, _name(("127.0.0.1", 0) if i == 3 else target))  # port 0: EINVAL
        assert batch.send(sender.fileno()) == [(3, errno.EINVAL)]
        assert [sinks[0].recv(64) for _ in range(5)] == [b"0", b"1", b"2", b"4", b"5"]


def test_a_batch_is_full_at_its_message_count() -> None:
    batch = MessageBatch()
    while batch.fits(10):
        batch.add(b"x" * 10, b"")
    assert len(batch) == 64
    assert not batch.fits(10)


def test_large_batches_go_through_the_send_thread(sinks: list[socket.socket]) -> None:
    sender_thread = SendThread()
    reports: list[Refused] = []
    done = threading.Event()

    def report(refused: Refused) -> None:
        reports.append(refused)
        done.set()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        outbox = Outbox(sock, sender_thread)
        try:
            first = outbox.batch
            for i in range(INLINE_BELOW + 2):
                outbox.batch.add(b"m%d" % i, _name(sinks[0].getsockname()))
            outbox.flush(report)
            assert outbox.batch is not first  # a fresh batch while that one is sent
            assert done.wait(5)
            assert reports == [[]]
            assert [sinks[0].recv(64) for _ in range(INLINE_BELOW + 2)] == [
                b"m%d" % i for i in range(INLINE_BELOW + 2)
            ]
            done.clear()
            outbox.batch.add(b"few", _name(sinks[0].getsockname()))
            outbox.flush(report)  # below INLINE_BELOW: sent by the caller, reported at once
            assert done.is_set() and reports == [[], []]
            assert sinks[0].recv(64) == b"few"
        finally:
            sender_thread.close()
