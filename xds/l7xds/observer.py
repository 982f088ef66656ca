"""What the server reports about its clients: ACKs and NACKs, as events and counters."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AckEvent:
    node_id: str
    type_url: str
    version: str
    nonce: str
    delta: bool


@dataclass(frozen=True, slots=True)
class NackEvent:
    """A client rejected a response; it keeps its previous configuration."""

    node_id: str
    type_url: str
    version: str
    nonce: str
    resource_names: tuple[str, ...]
    message: str
    delta: bool


class Observer(Protocol):
    def on_ack(self, event: AckEvent) -> None: ...

    def on_nack(self, event: NackEvent) -> None: ...


class XdsStats:
    """An :class:`Observer` that counts and keeps the latest state per (node, type)."""

    def __init__(self, keep: int = 100) -> None:
        self.acks = 0
        self.nacks = 0
        self.acked: dict[tuple[str, str], str] = {}
        self.last_nack: dict[tuple[str, str], NackEvent] = {}
        self.recent_nacks: collections.deque[NackEvent] = collections.deque(maxlen=keep)

    def on_ack(self, event: AckEvent) -> None:
        self.acks += 1
        self.acked[event.node_id, event.type_url] = event.version

    def on_nack(self, event: NackEvent) -> None:
        self.nacks += 1
        self.last_nack[event.node_id, event.type_url] = event
        self.recent_nacks.append(event)
