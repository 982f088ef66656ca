"""Labels with a source, as Cilium writes them: ``k8s:app=web``, ``reserved:host``, ``cidr:10.0.0.0/8``.

An identity is a :class:`LabelSet`; selectors (``l7.selectors``) are predicates over label sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

K8S = "k8s"
RESERVED = "reserved"
CIDR = "cidr"
FQDN = "fqdn"
ANY = "any"
UNSPEC = "unspec"

#: A selector key with one of these sources (or none) matches a label of any source.
WILDCARD_SOURCES = frozenset({ANY, UNSPEC})

NAMESPACE_KEY = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
SERVICE_ACCOUNT_KEY = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_KEY = "io.cilium.k8s.policy.cluster"
DEFAULT_CLUSTER = "default"


@dataclass(frozen=True, order=True)
class Label:
    source: str
    key: str
    value: str = ""

    def __str__(self) -> str:
        text = f"{self.source}:{self.key}"
        return f"{text}={self.value}" if self.value else text

    @classmethod
    def parse(cls, text: str, default_source: str = K8S) -> Label:
        """``"k8s:app=web"`` → ``Label("k8s", "app", "web")``; the source defaults to ``default_source``.

        The source is the part before the first ``:``; a ``cidr:`` key keeps its own colons (IPv6).
        """
        head, eq, value = text.partition("=")
        source, colon, key = head.partition(":")
        if not colon:
            source, key = default_source, head
        return cls(source, key, value if eq else "")


@dataclass(frozen=True)
class LabelSet:
    """An immutable, sorted, duplicate-free set of labels (the labels of one identity)."""

    labels: tuple[Label, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(sorted(set(self.labels))))

    @classmethod
    def of(cls, labels: Iterable[Label]) -> LabelSet:
        return cls(tuple(labels))

    @classmethod
    def parse(cls, texts: Iterable[str]) -> LabelSet:
        return cls(tuple(Label.parse(text) for text in texts))

    def __iter__(self) -> Iterator[Label]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    def union(self, other: Iterable[Label]) -> LabelSet:
        return LabelSet(self.labels + tuple(other))

    def values(self, key: str, source: str | None = None) -> tuple[str, ...]:
        """The values of ``key`` in ``source`` (any source when ``source`` is None/``any``/``unspec``)."""
        anysource = source is None or source in WILDCARD_SOURCES
        return tuple(lb.value for lb in self.labels if lb.key == key and (anysource or lb.source == source))

    def has_source(self, source: str) -> bool:
        return any(lb.source == source for lb in self.labels)

    def has(self, source: str, key: str) -> bool:
        return any(lb.source == source and lb.key == key for lb in self.labels)

    def strings(self) -> tuple[str, ...]:
        return tuple(str(lb) for lb in self.labels)

    def __str__(self) -> str:
        return ",".join(self.strings())


def k8s_labels(
    labels: Mapping[str, str],
    *,
    namespace: str,
    namespace_labels: Mapping[str, str] | None = None,
    service_account: str = "default",
    cluster: str = DEFAULT_CLUSTER,
) -> LabelSet:
    """The identity labels Cilium derives for a pod: pod, namespace, service-account and cluster labels."""
    out = [Label(K8S, key, value) for key, value in labels.items()]
    out.append(Label(K8S, NAMESPACE_KEY, namespace))
    ns_labels = dict(namespace_labels or {})
    ns_labels.setdefault("kubernetes.io/metadata.name", namespace)
    out += [Label(K8S, NAMESPACE_LABELS_PREFIX + key, value) for key, value in ns_labels.items()]
    out.append(Label(K8S, SERVICE_ACCOUNT_KEY, service_account))
    out.append(Label(K8S, CLUSTER_KEY, cluster))
    return LabelSet.of(out)
