"""Immutable per-node snapshots of encoded resources, and their consistency check.

A :class:`Resource` is encoded exactly once (deterministic protobuf bytes); its version is a hash of
those bytes, so equal content always has equal versions and a stream can tell "changed" from "same"
without looking inside. An :class:`Encoder` remembers resources by a caller-chosen key (e.g. the
content hash of the rule set they were built from) so an unchanged input is never rebuilt nor
re-encoded.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import any_pb2  # type: ignore[import-untyped]

from l7xds import resources as rt
from l7xds.errors import InconsistentSnapshotError

_MESSAGE_TYPES: dict[str, Any] = {
    rt.CLUSTER: cluster_pb2.Cluster,
    rt.LISTENER: listener_pb2.Listener,
    rt.ROUTE: route_pb2.RouteConfiguration,
    rt.SECRET: secret_pb2.Secret,
}


def content_hash(*parts: bytes | str) -> str:
    """A short, stable hex digest (versions, names)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Resource:
    """One encoded xDS resource. ``message`` is kept for checks only and must not be mutated."""

    type_url: str
    name: str
    body: bytes
    version: str
    message: Any = field(compare=False, repr=False)

    @classmethod
    def encode(cls, type_url: str, message: Any) -> Resource:
        body: bytes = message.SerializeToString(deterministic=True)
        name = message.cluster_name if type_url == rt.ENDPOINT else message.name
        return cls(type_url, name, body, content_hash(body), message)

    def to_any(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.body)


class Snapshot:
    """An immutable set of resources per type URL; names are unique within a type."""

    __slots__ = ("_by_type", "_problems", "_versions")

    def __init__(self, resources: Iterable[Resource]) -> None:
        by_type: dict[str, dict[str, Resource]] = {}
        duplicates: list[str] = []
        for resource in resources:
            named = by_type.setdefault(resource.type_url, {})
            if resource.name in named and named[resource.name].version != resource.version:
                duplicates.append(f"{rt.short(resource.type_url)} {resource.name!r} defined twice")
            named[resource.name] = resource
        if duplicates:
            raise InconsistentSnapshotError(duplicates)
        self._by_type: Mapping[str, Mapping[str, Resource]] = MappingProxyType(
            {type_url: MappingProxyType(dict(sorted(named.items()))) for type_url, named in by_type.items()}
        )
        self._versions = {
            type_url: subset_version(named.values()) for type_url, named in self._by_type.items()
        }
        self._problems: list[str] | None = None  # computed once: the snapshot never changes

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        return self._by_type.get(type_url, MappingProxyType({}))

    def type_urls(self) -> tuple[str, ...]:
        return tuple(self._by_type)

    def same_as(self, other: Snapshot | None) -> bool:
        """Whether ``other`` holds exactly the same resources (every type's version is equal)."""
        return other is not None and self._versions == other._versions

    def version(self, type_url: str) -> str:
        """The version of all resources of a type (the empty set has a version too)."""
        return self._versions.get(type_url) or subset_version(())

    def problems(self) -> list[str]:
        """Everything that makes this snapshot unfit to publish (empty when consistent)."""
        if self._problems is None:
            self._problems = self._find_problems()
        return list(self._problems)

    def _find_problems(self) -> list[str]:
        problems: list[str] = []
        listeners = self.resources(rt.LISTENER)
        routes = self.resources(rt.ROUTE)
        clusters = self.resources(rt.CLUSTER)
        endpoints = self.resources(rt.ENDPOINT)
        secrets = self.resources(rt.SECRET)
        for listener in listeners.values():
            for secret_name in rt.listener_secret_names(listener.message):
                if secret_name not in secrets:
                    problems.append(f"listener {listener.name!r} uses missing secret {secret_name!r}")
            problems.extend(_listener_problems(listener.message))
            for route_name in rt.listener_route_names(listener.message):
                if route_name not in routes:
                    problems.append(
                        f"listener {listener.name!r} uses missing route configuration {route_name!r}"
                    )
        for route in routes.values():
            for cluster_name in rt.route_cluster_names(route.message):
                if cluster_name not in clusters:
                    problems.append(
                        f"route configuration {route.name!r} uses missing cluster {cluster_name!r}"
                    )
        for cluster in clusters.values():
            message = cluster.message
            if message.HasField("transport_socket"):
                for secret_name in rt.transport_secret_names(message.transport_socket):
                    if secret_name not in secrets:
                        problems.append(f"cluster {cluster.name!r} uses missing secret {secret_name!r}")
            if message.type == cluster_pb2.Cluster.EDS:
                service = message.eds_cluster_config.service_name or message.name
                if service not in endpoints:
                    problems.append(f"cluster {cluster.name!r} uses missing endpoints {service!r}")
        return problems

    def check(self) -> None:
        """Raise :class:`InconsistentSnapshotError` listing every problem."""
        problems = self.problems()
        if problems:
            raise InconsistentSnapshotError(problems)


def subset_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources: a hash of their names and versions."""
    return content_hash(*(f"{r.name}={r.version}" for r in sorted(resources, key=lambda r: r.name)))


def _listener_problems(listener: listener_pb2.Listener) -> list[str]:
    problems: list[str] = []
    seen: dict[bytes, int] = {}
    for index, chain in enumerate(listener.filter_chains):
        match = chain.filter_chain_match
        for kind, ranges in (
            ("prefix_ranges", match.prefix_ranges),
            ("source_prefix_ranges", match.source_prefix_ranges),
        ):
            for cidr in ranges:
                text = f"{cidr.address_prefix}/{cidr.prefix_len.value}"
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError:
                    problems.append(
                        f"listener {listener.name!r} filter chain {index} {kind}: invalid CIDR {text!r}"
                    )
        key = match.SerializeToString(deterministic=True)
        if key in seen:
            problems.append(
                f"listener {listener.name!r} filter chains {seen[key]} and {index} have the same match"
            )
        else:
            seen[key] = index
    return problems


class Encoder:
    """Remembers encoded resources by key across builds; keys not used by the last build are dropped.

    Call :meth:`encode` for every resource of a build, then :meth:`sweep` once the build is complete.
    """

    def __init__(self) -> None:
        self._memo: dict[Hashable, Resource] = {}
        self._used: set[Hashable] = set()
        self.encoded = 0

    def encode(self, type_url: str, key: Hashable, build: Callable[[], Any]) -> Resource:
        self._used.add(key)
        found = self._memo.get(key)
        if found is None:
            found = Resource.encode(type_url, build())
            self._memo[key] = found
            self.encoded += 1
        return found

    def sweep(self) -> None:
        self._memo = {key: value for key, value in self._memo.items() if key in self._used}
        self._used = set()
