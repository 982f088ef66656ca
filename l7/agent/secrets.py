"""Secrets for ``headerMatches[].secret`` and for TLS (``terminatingTLS``/``originatingTLS``): read
from files, never from the policy.

Layout (what the Kubernetes controller writes for the Secrets policies refer to, or what an operator
provides in files mode)::

    <secrets dir>/<namespace>/<name>          headerMatches: the value (one trailing newline is ignored)
    <secrets dir>/<namespace>/<name>/<item>   TLS: the Kubernetes Secret's keys as files
                                              (tls.crt, tls.key, ca.crt), read as they are

A reference without a namespace means ``default`` (as in Cilium).

A secret that is missing or unreadable is simply absent: the rules referring to it cannot match (the
request is denied), as the policy reference says.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger("l7gate.agent.secrets")
SecretKey = tuple[str, str]  # (namespace, name)


def load_secrets(directory: Path) -> dict[SecretKey, str]:
    out: dict[SecretKey, str] = {}
    if not directory.is_dir():
        return out
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for f in sorted(entry.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    _read(out, (entry.name, f.name), f)
    return out


def load_tls_secrets(directory: Path) -> dict[SecretKey, dict[str, str]]:
    """(namespace, name) → item → text, for every ``<namespace>/<name>/`` directory; an unreadable
    item is left out (the port using it fails closed)."""
    out: dict[SecretKey, dict[str, str]] = {}
    if not directory.is_dir():
        return out
    for namespace in sorted(directory.iterdir()):
        if namespace.name.startswith(".") or not namespace.is_dir():
            continue
        for secret in sorted(namespace.iterdir()):
            if secret.name.startswith(".") or not secret.is_dir():
                continue
            items: dict[str, str] = {}
            for item in sorted(secret.iterdir()):
                if item.name.startswith(".") or not item.is_file():
                    continue
                try:
                    items[item.name] = item.read_text()
                except (OSError, UnicodeDecodeError) as exc:
                    log.error(
                        "secret %s/%s item %s unreadable: %s", namespace.name, secret.name, item.name, exc
                    )
            out[(namespace.name, secret.name)] = items
    return out


def _read(out: dict[SecretKey, str], key: SecretKey, path: Path) -> None:
    try:
        value = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        log.error("secret %s/%s unreadable: %s (rules using it cannot match)", key[0], key[1], exc)
        return
    out[key] = value[:-1] if value.endswith("\n") else value


def fingerprint(directory: Path) -> str:
    """Changes when any secret file is added, removed or rewritten (names, sizes, mtimes)."""
    h = hashlib.sha256()
    if directory.is_dir():
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                h.update(f"{p.relative_to(directory)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
