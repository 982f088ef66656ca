"""Secrets referenced by ``headerMatches`` → the agent's secrets directory (:mod:`l7.agent.secrets`).

Only referenced secrets are read (``get`` one by one: no list or watch of every secret in the
cluster). As in Cilium, a referenced secret must hold exactly one entry, whose (decoded) value is what
the header is compared with; a missing or ambiguous secret is left out, and the rule cannot match.
A reference without a namespace means the ``default`` namespace.

Layout (written by :func:`l7.k8s.output.write_secrets`, files mode 0600)::

    <state dir>/secrets/<namespace>/<name>      the value
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_NAMESPACE = "default"


def lookup(ref: tuple[str | None, str]) -> tuple[str, str]:
    """Where a reference points: (namespace, name)."""
    return (ref[0] or DEFAULT_NAMESPACE, ref[1])


def secret_value(secret: Mapping[str, Any]) -> str | None:
    """The single entry's value of a Secret object, or None (no entry, several, or not decodable)."""
    data = secret.get("data") or {}
    if len(data) != 1:
        return None
    (raw,) = data.values()
    try:
        return base64.b64decode(str(raw), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def secret_values(
    refs: Iterable[tuple[str | None, str]], found: Mapping[tuple[str, str], Mapping[str, Any] | None]
) -> dict[tuple[str, str], str]:
    """(namespace, name) → value for ``refs``, from the secrets read (``found``: lookup key → object)."""
    out: dict[tuple[str, str], str] = {}
    for key in sorted({lookup(ref) for ref in refs}):
        obj = found.get(key)
        value = secret_value(obj) if obj is not None else None
        if value is not None:
            out[key] = value
    return out
