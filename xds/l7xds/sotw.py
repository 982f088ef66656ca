"""State-of-the-world protocol state of one ADS stream (no I/O: requests in, responses out).

Rules (xDS REST and gRPC protocol, "ACK/NACK and resource type instance version"):

- Versions are per type and computed from what the client subscribed to, nonces are per stream.
- A request whose ``response_nonce`` is not the latest nonce sent for its type is stale and ignored.
- A NACK (``error_detail`` set) is reported; the rejected version is never resent: a response is only
  sent when the content for the subscription differs from what was last sent.
- LDS and CDS with no names (or ``*``) are wildcard subscriptions and carry the complete state; RDS and
  EDS carry the named resources.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from l7xds import resources as rt
from l7xds.observer import AckEvent, NackEvent, Observer
from l7xds.snapshot import Resource, Snapshot, subset_version

log = logging.getLogger(__name__)

WILDCARD = "*"


@dataclass
class _TypeState:
    wildcard: bool
    names: frozenset[str]
    sent_version: str | None = None
    sent_names: tuple[str, ...] = ()
    nonce: str | None = None
    acked_version: str | None = None
    nacked: set[str] = field(default_factory=set)


def ordered(type_urls: Collection[str]) -> list[str]:
    """Type URLs in make-before-break order (CDS, EDS, LDS, RDS, then anything else by name)."""
    return [t for t in rt.ORDER if t in type_urls] + sorted(t for t in type_urls if t not in rt.ORDER)


class SotwStream:
    """One SotW ADS stream. Feed it requests and snapshots; send what it returns, in order."""

    def __init__(self, observer: Observer | None = None) -> None:
        self.node_id = ""
        self._observer = observer
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot | None
    ) -> list[discovery_pb2.DiscoveryResponse]:
        if request.node.id:
            self.node_id = request.node.id
        type_url = request.type_url
        if not type_url:
            log.warning("node %s: SotW request without type_url ignored", self.node_id)
            return []
        state = self._types.get(type_url)
        names = frozenset(request.resource_names)
        if state is not None and request.response_nonce and request.response_nonce != state.nonce:
            log.debug(
                "node %s: stale %s nonce %s ignored", self.node_id, rt.short(type_url), request.response_nonce
            )
            return []
        if state is None:
            wildcard = WILDCARD in names or (not names and type_url in rt.WILDCARD_TYPES)
            state = self._types[type_url] = _TypeState(wildcard=wildcard, names=names - {WILDCARD})
            initial = True
        else:
            state.wildcard = WILDCARD in names or (not names and state.wildcard)
            state.names = names - {WILDCARD}
            initial = False
        if request.response_nonce and not initial:
            self._ack_or_nack(type_url, state, request)
        response = self._respond(type_url, state, snapshot, force=initial)
        return [] if response is None else [response]

    def on_snapshot(self, snapshot: Snapshot | None) -> list[discovery_pb2.DiscoveryResponse]:
        responses = []
        for type_url in ordered(self._types):
            response = self._respond(type_url, self._types[type_url], snapshot, force=False)
            if response is not None:
                responses.append(response)
        return responses

    def acked_version(self, type_url: str) -> str | None:
        state = self._types.get(type_url)
        return None if state is None else state.acked_version

    def _ack_or_nack(self, type_url: str, state: _TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        nonce = request.response_nonce
        if request.HasField("error_detail"):
            version = state.sent_version or ""
            state.nacked.add(version)
            event = NackEvent(
                node_id=self.node_id,
                type_url=type_url,
                version=version,
                nonce=nonce,
                resource_names=state.sent_names,
                message=request.error_detail.message,
                delta=False,
            )
            log.warning(
                "node %s NACKed %s version %s (nonce %s, resources %s): %s; keeping version %s",
                self.node_id,
                rt.short(type_url),
                version,
                nonce,
                ", ".join(state.sent_names),
                request.error_detail.message,
                request.version_info or "none",
                extra={"fields": {"event": "nack", **asdict(event)}},
            )
            if self._observer is not None:
                self._observer.on_nack(event)
            return
        state.acked_version = request.version_info
        if self._observer is not None:
            self._observer.on_ack(AckEvent(self.node_id, type_url, request.version_info, nonce, delta=False))

    def _respond(
        self, type_url: str, state: _TypeState, snapshot: Snapshot | None, *, force: bool
    ) -> discovery_pb2.DiscoveryResponse | None:
        if snapshot is None:
            return None
        available = snapshot.resources(type_url)
        chosen: list[Resource]
        if state.wildcard:
            chosen = list(available.values())
            version = snapshot.version(type_url)
        else:
            chosen = [available[name] for name in sorted(state.names) if name in available]
            version = subset_version(chosen)
        if not force and version == state.sent_version:
            return None
        self._nonce += 1
        state.nonce = str(self._nonce)
        state.sent_version = version
        state.sent_names = tuple(r.name for r in chosen)
        log.debug(
            "node %s: sending %s version %s nonce %s", self.node_id, rt.short(type_url), version, state.nonce
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            resources=[r.to_any() for r in chosen],
            type_url=type_url,
            nonce=state.nonce,
        )
