"""The reserved entities a rule may name in ``toEntities`` / ``fromEntities`` (Cilium's set)."""

from __future__ import annotations

ENTITIES: frozenset[str] = frozenset(
    {
        "host",
        "remote-node",
        "kube-apiserver",
        "ingress",
        "cluster",
        "init",
        "health",
        "unmanaged",
        "world",
        "world-ipv4",
        "world-ipv6",
        "all",
        "none",
    }
)
