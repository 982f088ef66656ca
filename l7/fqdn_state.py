"""The FQDN cache on disk: a snapshot plus journals of the names that changed since (issue 16).

::

    <state dir>/fqdn-cache-<node>.json             snapshot: {"version": 1, "journal": S, "saved": t,
                                                     "names": {name: [[ip, ttl, learned, expires], ...]},
                                                     "selectors": {name: [selector text, ...]}}
    <state dir>/fqdn-cache-<node>.json.journal.<N> JSON lines, N ≥ S, each a slice of changed names:
                                                     [[name, [[ip, ttl, learned, expires], ...], [selectors]],
                                                      ...]  (no rows: the name is gone)

A journal record is the name's whole state after the change, so replaying the journals in order over
the snapshot gives the cache (a name's last record wins; replaying one twice changes nothing). The
writer appends only the names that changed since its last flush, in slices, so the work is
proportional to the change, not to the cache. When the journals outgrow the snapshot,
:meth:`StateStore.compact` starts a new journal *first* and then writes a fresh snapshot slice by slice
from the live cache: every change after the switch is in the new journal, so a snapshot taken any time
after it plus that journal is the cache; the older journals are deleted once the snapshot is renamed
into place. A crash in between leaves the old snapshot and every journal: still the cache. A torn last
line (a crash in the middle of a write: that slice's names keep their earlier state) is skipped, and a
restarted writer never appends to an old journal (it starts the next number).

Readers (the agent at start, ``l7gate fqdn cache``, :mod:`l7.node_view`) call :func:`read_state`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Row = list[Any]  # [ip, ttl, learned, expires]
Record = tuple[str, list[Row], list[str]]  # (name, rows, selectors); no rows: the name is gone

JOURNAL = ".journal."
MIN_COMPACT_BYTES = 1 << 20
"""Journals are compacted into the snapshot once they hold more than this and more than the
snapshot itself (so the snapshot's cost is paid at most once per its size of journal)."""


def snapshot_path(state_dir: Path, node: str) -> Path:
    return state_dir / f"fqdn-cache-{node}.json"


def journal_path(snapshot: Path, seq: int) -> Path:
    return snapshot.with_name(f"{snapshot.name}{JOURNAL}{seq}")


def journals(snapshot: Path) -> list[tuple[int, Path]]:
    """The snapshot's journal files, oldest first."""
    out: list[tuple[int, Path]] = []
    prefix = snapshot.name + JOURNAL
    try:
        paths = list(snapshot.parent.iterdir())
    except OSError:
        return []
    for path in paths:
        if path.name.startswith(prefix) and path.name[len(prefix) :].isdigit():
            out.append((int(path.name[len(prefix) :]), path))
    return sorted(out)


def encode_records(records: list[Record]) -> str:
    """One journal line of ``records`` (one ``json.dumps`` call: a C loop, ~1 µs a record)."""
    return json.dumps(records, separators=(",", ":")) + "\n"


def decode_lines(text: str) -> Iterator[Record]:
    """The records of a journal's text; unparsable lines (a torn last line) are skipped."""
    for line in text.split("\n"):
        try:
            records = json.loads(line)
        except ValueError:
            continue
        for record in records if isinstance(records, list) else ():
            if not (isinstance(record, list) and len(record) == 3):
                continue
            name, rows, selectors = record
            if isinstance(name, str) and isinstance(rows, list) and isinstance(selectors, list):
                yield name, rows, selectors


def read_state(snapshot: Path) -> dict[str, Any] | None:
    """The saved cache: the snapshot with its journals replayed (``None``: nothing saved). Same shape
    as the snapshot; ``journal`` is the number a writer continues after."""
    try:
        data: Any = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        data = None
    found = journals(snapshot)
    if data is None and not found:
        return None
    state: dict[str, Any] = data or {"version": 1}
    names: dict[str, Any] = dict(state.get("names") or {})
    selectors: dict[str, Any] = dict(state.get("selectors") or {})
    first = int(state.get("journal", 0))
    last = first - 1
    for seq, path in found:
        if seq < first:
            continue  # compacted into the snapshot (left by a crash before its deletion)
        last = seq
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for name, rows, sels in decode_lines(text):
            names.pop(name, None)  # re-inserted: the latest changed name is the newest
            selectors.pop(name, None)
            if rows:
                names[name] = rows
                selectors[name] = sels
    state["names"], state["selectors"], state["journal"] = names, selectors, last + 1
    return state


class StateStore:
    """Writes the cache as snapshot + journals (see the module docstring). One writer thread.

    ``pause`` is slept between slices of work (``slice_names`` names each): the writer runs beside the
    DNS proxy's thread in the same interpreter, and a slice is the longest the proxy waits for the GIL
    because of it (a C-level ``json.dumps`` of the whole cache would hold it for tens of ms)."""

    def __init__(self, snapshot: Path, slice_names: int = 256, pause: float = 0.001) -> None:
        self.snapshot = snapshot
        self.slice_names = slice_names
        self.pause = pause
        self.seq = 0
        self.journal_bytes = 0
        self.snapshot_bytes = 0
        self.compactions = 0

    def load(self) -> dict[str, Any] | None:
        """:func:`read_state`; later appends go to a new journal (never after a torn line)."""
        state = read_state(self.snapshot)
        found = journals(self.snapshot)
        self.seq = max([int(state["journal"]) if state else 0] + [seq + 1 for seq, _ in found])
        try:
            self.snapshot_bytes = self.snapshot.stat().st_size
        except OSError:
            self.snapshot_bytes = 0
        first = int(state.get("journal", 0)) if state else 0
        self.journal_bytes = sum(_size(path) for seq, path in found if seq >= first)
        if not self.snapshot.exists():  # readers find a node's state by its snapshot file
            self.snapshot.write_text('{"version":1,"journal":0,"names":{},"selectors":{}}')
        return state

    def append(self, records: list[Record]) -> None:
        """Append ``records`` to the current journal (one write)."""
        if not records:
            return
        text = encode_records(records)
        path = journal_path(self.snapshot, self.seq)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(text)
        self.journal_bytes += len(text)

    def flush(self, take: Callable[[int], list[Record]]) -> int:
        """Append what ``take(limit)`` hands out (the changed names, at most ``limit`` per call) until
        it is empty, sleeping ``pause`` between slices. Returns the records written."""
        written = 0
        while True:
            records = take(self.slice_names)
            if not records:
                return written
            self.append(records)
            written += len(records)
            if len(records) < self.slice_names:
                return written
            time.sleep(self.pause)

    def needs_compaction(self) -> bool:
        return self.journal_bytes > max(MIN_COMPACT_BYTES, self.snapshot_bytes)

    def compact(self, names: list[str], rows_of: Callable[[list[str]], list[Record]]) -> None:
        """Write a fresh snapshot of ``names`` (``rows_of(slice)``: their current records, names gone
        left out), slice by slice, then drop the journals it covers. The caller's later appends must
        go through this store (they land in the new journal)."""
        self.seq += 1
        first = self.seq
        self.journal_bytes = 0
        tmp = self.snapshot.with_name(self.snapshot.name + ".tmp")
        selectors: list[str] = []
        size = 0
        with tmp.open("w", encoding="utf-8") as fh:
            head = f'{{"version":1,"journal":{first},"saved":{time.time()!r},"names":{{'
            fh.write(head)
            size += len(head)
            sep = ""
            for start in range(0, len(names), self.slice_names):
                records = rows_of(names[start : start + self.slice_names])
                if records:
                    part = json.dumps({n: rows for n, rows, _ in records}, separators=(",", ":"))[1:-1]
                    fh.write(sep + part)
                    size += len(sep) + len(part)
                    sep = ","
                    selectors.append(json.dumps({n: s for n, _, s in records}, separators=(",", ":"))[1:-1])
                time.sleep(self.pause)
            tail = '},"selectors":{' + ",".join(selectors) + "}}"
            fh.write(tail)
            size += len(tail)
        tmp.replace(self.snapshot)
        self.snapshot_bytes = size
        self.compactions += 1
        for seq, path in journals(self.snapshot):
            if seq < first:
                path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
