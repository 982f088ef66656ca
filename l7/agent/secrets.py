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
import ssl
from pathlib import Path

from l7xds.tls import CERT_KINDS, KEY_KINDS, PROBLEM_ITEM, pem_problem

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
            problem = keypair_problem(secret / CERT_ITEM, secret / KEY_ITEM) if _pem_pair(items) else None
            if problem:
                log.error(
                    "secret %s/%s: %s (the ports using it refuse connections)",
                    namespace.name,
                    secret.name,
                    problem,
                )
                items = {k: v for k, v in items.items() if k not in PAIR} | {PROBLEM_ITEM: problem}
            ca = items.get(CA_ITEM)
            ca_problem = trust_problem(ca) if ca is not None and pem_problem(ca, CERT_KINDS) is None else None
            if ca_problem:
                log.error("secret %s/%s: %s", namespace.name, secret.name, ca_problem)
                items = {k: v for k, v in items.items() if k != CA_ITEM} | {
                    f"{PROBLEM_ITEM}:{CA_ITEM}": ca_problem
                }
            out[(namespace.name, secret.name)] = items
    return out


CERT_ITEM, KEY_ITEM, CA_ITEM = "tls.crt", "tls.key", "ca.crt"
PAIR = frozenset({CERT_ITEM, KEY_ITEM})


def _pem_pair(items: dict[str, str]) -> bool:
    """Both items present and PEM of the right kinds (else the per-item problem is the one reported)."""
    return (
        items.keys() >= PAIR
        and pem_problem(items[CERT_ITEM], CERT_KINDS) is None
        and pem_problem(items[KEY_ITEM], KEY_KINDS) is None
    )


def trust_problem(pem: str) -> str | None:
    """Why ``pem`` is not a set of CA certificates OpenSSL (and so Envoy) can load, or None."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        return f"{CA_ITEM} is not a CA certificate OpenSSL can load ({why})"
    return None


def keypair_problem(cert: Path, key: Path) -> str | None:
    """Why ``cert`` and ``key`` are not a certificate and its private key (OpenSSL, as Envoy loads them),
    or None. Envoy refuses a mismatched pair with a NACK, which holds back every later change of the
    node's Envoy: the agent finds out first and fails the ports using it closed instead."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=b"")  # an encrypted key fails too: Envoy has no password
    except (ssl.SSLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc
        return f"{CERT_ITEM} and {KEY_ITEM} are not a certificate and its key ({why})"
    return None


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
