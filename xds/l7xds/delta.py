"""Incremental (Delta) protocol state of one ADS stream (no I/O: requests in, responses out).

- Every resource has its own version (its content hash); the stream remembers which version the client
  has of each name and sends only what differs, plus ``removed_resources`` for names that disappeared.
- Every request that subscribes gets an answer, even if nothing changed: the known resources for the
  newly subscribed names, and the names that do not exist in ``removed_resources``.
- ``initial_resource_versions`` is only a hint of what the client has: it seeds the stream's memory,
  names the client has that no longer exist are reported removed.
- A NACK is reported and the rejected versions are not resent: the stream remembers them as sent, so only
  a later different version goes out. Nonces map to what was sent, since delta ACKs carry no version.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from l7xds import resources as rt
from l7xds.observer import AckEvent, NackEvent, Observer
from l7xds.snapshot import Snapshot
from l7xds.sotw import WILDCARD, ordered

log = logging.getLogger(__name__)


@dataclass
class _TypeState:
    wildcard: bool
    names: set[str] = field(default_factory=set)
    #: name -> version the client has; None = the client was told the name does not exist.
    known: dict[str, str | None] = field(default_factory=dict)
    #: A request asked for an answer before there was a snapshot.
    pending: bool = False


@dataclass(frozen=True, slots=True)
class _Sent:
    type_url: str
    system_version: str
    names: tuple[str, ...]


class DeltaStream:
    """One Delta ADS stream. Feed it requests and snapshots; send what it returns, in order."""

    def __init__(self, observer: Observer | None = None) -> None:
        self.node_id = ""
        self._observer = observer
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0
        self._sent: dict[str, _Sent] = {}

    def on_request(
        self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot | None
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        if request.node.id:
            self.node_id = request.node.id
        type_url = request.type_url
        if not type_url:
            log.warning("node %s: delta request without type_url ignored", self.node_id)
            return []
        if request.response_nonce:
            self._ack_or_nack(request)
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        state = self._types.get(type_url)
        answer = bool(subscribe)
        if state is None:
            state = self._types[type_url] = _TypeState(wildcard=not subscribe or WILDCARD in subscribe)
            state.names = subscribe - {WILDCARD}
            for name, version in request.initial_resource_versions.items():
                if state.wildcard or name in state.names:
                    state.known[name] = version
            answer = True
        else:
            if WILDCARD in subscribe:
                state.wildcard = True
            for name in subscribe - {WILDCARD}:
                state.names.add(name)
                state.known.pop(name, None)  # answer it again even if the client has it
        if WILDCARD in unsubscribe:
            state.wildcard = False
        for name in unsubscribe - {WILDCARD}:
            state.names.discard(name)
            if not state.wildcard:
                state.known.pop(name, None)
        if not state.wildcard:
            for name in [n for n in state.known if n not in state.names]:
                del state.known[name]
        response = self._respond(type_url, state, snapshot, always=answer)
        return [] if response is None else [response]

    def on_snapshot(self, snapshot: Snapshot | None) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        responses = []
        for type_url in ordered(self._types):
            response = self._respond(type_url, self._types[type_url], snapshot, always=False)
            if response is not None:
                responses.append(response)
        return responses

    def known_versions(self, type_url: str) -> dict[str, str | None]:
        state = self._types.get(type_url)
        return {} if state is None else dict(state.known)

    def _ack_or_nack(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        nonce = request.response_nonce
        sent = self._sent.pop(nonce, None)
        if sent is None:
            log.debug("node %s: unknown delta nonce %s", self.node_id, nonce)
            return
        # The client answers in order: responses older than this one will never be answered.
        for older in [
            n for n in self._sent if int(n) < int(nonce) and self._sent[n].type_url == sent.type_url
        ]:
            del self._sent[older]
        if request.HasField("error_detail"):
            event = NackEvent(
                node_id=self.node_id,
                type_url=sent.type_url,
                version=sent.system_version,
                nonce=nonce,
                resource_names=sent.names,
                message=request.error_detail.message,
                delta=True,
            )
            log.warning(
                "node %s NACKed delta %s (nonce %s, resources %s): %s",
                self.node_id,
                rt.short(sent.type_url),
                nonce,
                ", ".join(sent.names),
                request.error_detail.message,
                extra={"fields": {"event": "nack", **asdict(event)}},
            )
            if self._observer is not None:
                self._observer.on_nack(event)
        elif self._observer is not None:
            self._observer.on_ack(
                AckEvent(self.node_id, sent.type_url, sent.system_version, nonce, delta=True)
            )

    def _respond(
        self, type_url: str, state: _TypeState, snapshot: Snapshot | None, *, always: bool
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        always = always or state.pending
        if snapshot is None:
            state.pending = always
            return None
        state.pending = False
        available = snapshot.resources(type_url)
        candidates = set(state.names)
        if state.wildcard:
            candidates |= available.keys() | state.known.keys()
        updates = []
        removed = []
        for name in sorted(candidates):
            resource = available.get(name)
            if resource is not None:
                if state.known.get(name) != resource.version:
                    updates.append(resource)
                    state.known[name] = resource.version
            elif name in state.names:
                if name not in state.known or state.known[name] is not None:
                    removed.append(name)
                    state.known[name] = None
            elif state.known.pop(name, None) is not None:
                removed.append(name)
        if not (updates or removed or always):
            return None
        self._nonce += 1
        nonce = str(self._nonce)
        system_version = snapshot.version(type_url)
        self._sent[nonce] = _Sent(type_url, system_version, tuple(r.name for r in updates))
        log.debug(
            "node %s: delta %s nonce %s: %d updated, %d removed",
            self.node_id,
            rt.short(type_url),
            nonce,
            len(updates),
            len(removed),
        )
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=system_version,
            type_url=type_url,
            nonce=nonce,
            resources=[
                discovery_pb2.Resource(name=r.name, version=r.version, resource=r.to_any()) for r in updates
            ],
            removed_resources=removed,
        )
