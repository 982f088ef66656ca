"""Per-node snapshot cache: publishing checks consistency, watchers wake on every change.

All methods run on the event loop thread of the server (``set_snapshot`` is cheap: the snapshot was
built and encoded beforehand, off the request path).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from l7xds.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    snapshot: Snapshot | None = None
    generation: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class SnapshotCache:
    """Holds the current snapshot of each node id."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def _slot(self, node_id: str) -> _Slot:
        return self._slots.setdefault(node_id, _Slot())

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> None:
        """Publish ``snapshot`` for ``node_id``; raises InconsistentSnapshotError and keeps the old one."""
        snapshot.check()
        slot = self._slot(node_id)
        slot.snapshot = snapshot
        self._bump(slot)
        log.debug("published snapshot generation %d for node %s", slot.generation, node_id)

    def clear(self, node_id: str) -> None:
        """Forget a node's snapshot; connected streams keep what they have."""
        slot = self._slots.get(node_id)
        if slot is not None:
            slot.snapshot = None
            self._bump(slot)

    def snapshot(self, node_id: str) -> Snapshot | None:
        slot = self._slots.get(node_id)
        return None if slot is None else slot.snapshot

    def generation(self, node_id: str) -> int:
        return self._slot(node_id).generation

    async def wait_newer(self, node_id: str, generation: int) -> int:
        """Return the node's generation once it is newer than ``generation``."""
        slot = self._slot(node_id)
        while slot.generation <= generation:
            await slot.changed.wait()
        return slot.generation

    @staticmethod
    def _bump(slot: _Slot) -> None:
        slot.generation += 1
        previous, slot.changed = slot.changed, asyncio.Event()
        previous.set()
