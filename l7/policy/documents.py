"""Policy documents: YAML files and directories → :class:`Policy` values plus every error found.

STUB: the loader is being written; the value types below are the stable interface.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from l7.policy.model import Rule


class Kind(enum.StrEnum):
    L7_NETWORK_POLICY = "L7NetworkPolicy"
    L7_CLUSTERWIDE_NETWORK_POLICY = "L7ClusterwideNetworkPolicy"
    CILIUM_NETWORK_POLICY = "CiliumNetworkPolicy"
    CILIUM_CLUSTERWIDE_NETWORK_POLICY = "CiliumClusterwideNetworkPolicy"

    @property
    def namespaced(self) -> bool:
        return self in (Kind.L7_NETWORK_POLICY, Kind.CILIUM_NETWORK_POLICY)


@dataclass(frozen=True)
class Policy:
    """One valid policy document.

    ``rules`` holds ``spec`` (one rule) and/or ``specs`` in document order; ``rule_paths[i]`` is the
    field path of ``rules[i]`` in the document (``"spec"`` or ``"specs[2]"``), used to report which
    rule decided a verdict. ``namespace`` is ``None`` for cluster-wide kinds; a namespaced document
    without ``metadata.namespace`` gets ``"default"``.
    """

    kind: Kind
    api_version: str
    name: str
    namespace: str | None
    rules: tuple[Rule, ...]
    rule_paths: tuple[str, ...]
    source: str = "<memory>"
    index: int = 0

    @property
    def key(self) -> str:
        """``Kind/namespace/name`` (``Kind/name`` when cluster-wide): unique within a policy set."""
        if self.namespace is None:
            return f"{self.kind}/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PolicyError:
    """One problem in one document: ``path`` is a field path such as ``spec.egress[0].toPorts``."""

    source: str
    index: int
    path: str
    message: str
    policy: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}[{self.index}]"
        if self.policy:
            where += f" ({self.policy})"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass(frozen=True)
class LoadResult:
    policies: tuple[Policy, ...]
    errors: tuple[PolicyError, ...]


def load_paths(paths: Sequence[Path]) -> LoadResult:
    """Load every ``*.yaml``/``*.yml`` file (directories recursively, sorted) and validate it."""
    raise NotImplementedError


def load_text(text: str, source: str = "<memory>") -> LoadResult:
    """Load and validate a (multi-document) YAML string."""
    raise NotImplementedError
