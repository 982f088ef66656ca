"""Secrets referenced by ``headerMatches`` and TLS contexts → the agent's secrets directory
(:mod:`l7.agent.secrets`).

Every Secret is read from ONE namespace, the secrets namespace (``--secrets-namespace``, default
``l7gate-secrets``, as Cilium's policy secrets namespace): the agent may ``get`` Secrets there and
nowhere else. A reference that names another namespace makes its policy invalid (field path); one
without a namespace is read from the secrets namespace.

Only referenced secrets are read (``get`` one by one: no list or watch of every secret in the
cluster). As in Cilium, a referenced secret must hold exactly one entry, whose (decoded) value is what
the header is compared with; a missing or ambiguous secret is left out, and the rule cannot match.
The agent looks a reference up under the namespace as written, or ``default`` without one: that is
where the values are written, whatever namespace they were read from.

Layout (written by :func:`l7.k8s.output.write_secrets`, files mode 0600)::

    <state dir>/secrets/<namespace>/<name>      the value
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
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
    refs: Iterable[tuple[str | None, str]],
    found: Mapping[tuple[str, str], Mapping[str, Any] | None],
    secrets_namespace: str | None = None,
) -> dict[tuple[str, str], str]:
    """(namespace, name) → value for ``refs`` — keyed where the agent looks them up (the namespace as
    written, or ``default``) — from the secrets read (``found``: (namespace, name) → object). With
    ``secrets_namespace``, every Secret is the one of that name in the secrets namespace."""
    out: dict[tuple[str, str], str] = {}
    for key in sorted({lookup(ref) for ref in refs}):
        obj = found.get((secrets_namespace, key[1]) if secrets_namespace else key)
        value = secret_value(obj) if obj is not None else None
        if value is not None:
            out[key] = value
    return out


# --- TLS (terminatingTLS / originatingTLS) -------------------------------------------------------------

DEFAULT_SECRETS_NAMESPACE = "l7gate-secrets"  # as Cilium's policy secrets namespace (cilium-secrets)
TLS_FIELDS = ("terminatingTLS", "originatingTLS")
TLSRefAt = tuple[str, str | None, str]  # (field path of the secret, namespace as written, name)


def _port_rules(obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(field path, toPorts entry) of every port rule of a policy object (``spec`` and ``specs``)."""
    specs: list[tuple[str, Any]] = []
    if isinstance(obj.get("spec"), Mapping):
        specs.append(("spec", obj["spec"]))
    for i, spec in enumerate(obj.get("specs") or ()):
        if isinstance(spec, Mapping):
            specs.append((f"specs[{i}]", spec))
    for where, spec in specs:
        for direction in ("ingress", "egress"):
            for i, rule in enumerate(spec.get(direction) or ()):
                if not isinstance(rule, Mapping):
                    continue
                for j, port_rule in enumerate(rule.get("toPorts") or ()):
                    if isinstance(port_rule, Mapping):
                        yield f"{where}.{direction}[{i}].toPorts[{j}]", port_rule


def _ref_at(path: str, secret: Any) -> list[TLSRefAt]:
    if isinstance(secret, Mapping) and secret.get("name"):
        return [(path, secret.get("namespace"), str(secret["name"]))]
    return []


def tls_refs(obj: Mapping[str, Any]) -> list[TLSRefAt]:
    """Every TLS secret reference of a policy object, with its field path."""
    out: list[TLSRefAt] = []
    for at, port_rule in _port_rules(obj):
        for name in TLS_FIELDS:
            tls = port_rule.get(name)
            if isinstance(tls, Mapping):
                out += _ref_at(f"{at}.{name}.secret", tls.get("secret"))
    return out


def header_refs(obj: Mapping[str, Any]) -> list[TLSRefAt]:
    """Every ``headerMatches[].secret`` reference of a policy object, with its field path."""
    out: list[TLSRefAt] = []
    for at, port_rule in _port_rules(obj):
        rules = port_rule.get("rules")
        http = rules.get("http") if isinstance(rules, Mapping) else None
        for k, http_rule in enumerate(http if isinstance(http, list) else ()):
            matches = http_rule.get("headerMatches") if isinstance(http_rule, Mapping) else None
            for m, match in enumerate(matches if isinstance(matches, list) else ()):
                if isinstance(match, Mapping):
                    out += _ref_at(f"{at}.rules.http[{k}].headerMatches[{m}].secret", match.get("secret"))
    return out


def ref_errors(refs: Iterable[TLSRefAt], secrets_namespace: str) -> list[tuple[str, str]]:
    """(field path, message) for references outside the secrets namespace (the only one read: the
    agent's RBAC allows ``get`` on Secrets there and nowhere else)."""
    return [
        (
            f"{path}.namespace",
            f"secrets are read only from the secrets namespace {secrets_namespace!r}, not {namespace!r}",
        )
        for path, namespace, _ in refs
        if namespace is not None and namespace != secrets_namespace
    ]



def tls_items(secret: Mapping[str, Any]) -> dict[str, str] | None:
    """Every entry of a Secret object, decoded (tls.crt, tls.key, ca.crt ...); None when one is not
    decodable text."""
    out: dict[str, str] = {}
    for item, raw in sorted((secret.get("data") or {}).items()):
        try:
            out[str(item)] = base64.b64decode(str(raw), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
    return out


def tls_values(
    refs: Iterable[TLSRefAt],
    secrets_namespace: str,
    found: Mapping[tuple[str, str], Mapping[str, Any] | None],
) -> dict[tuple[str, str], dict[str, str]]:
    """Where the agent looks each reference up — (namespace as written, or ``default``; name) — → the
    items of the Secret of that name in the secrets namespace (``found``: (namespace, name) → object)."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for _, namespace, name in refs:
        obj = found.get((secrets_namespace, name))
        items = tls_items(obj) if obj is not None else None
        if items is not None:
            out[(namespace or DEFAULT_NAMESPACE, name)] = items
    return out
