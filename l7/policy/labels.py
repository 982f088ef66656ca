"""Label keys and values of endpoint selectors, Kubernetes syntax plus Cilium's source prefix."""

from __future__ import annotations

import re

# Cilium label sources a selector key may name (``k8s:app``); a key without one means ``any``.
SOURCES = frozenset({"k8s", "any", "reserved", "container", "unspec"})

_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_DNS_1035_LABEL = re.compile(r"[a-z](?:[-a-z0-9]*[a-z0-9])?")


def split_source(key: str) -> tuple[str | None, str]:
    """``"k8s:app"`` → ``("k8s", "app")``; ``"app"`` → ``(None, "app")``."""
    source, colon, rest = key.partition(":")
    return (source, rest) if colon else (None, key)


def validate_key(key: str) -> str | None:
    """Why ``key`` (``[source:][prefix/]name``) is not a valid selector key, or ``None``."""
    source, name = split_source(key)
    if source is not None and source not in SOURCES:
        return f"label key {key!r}: unknown source {source!r} (one of {', '.join(sorted(SOURCES))})"
    prefix, slash, local = name.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return f"label key {key!r}: prefix {prefix!r} is not a DNS subdomain"
    if not local or len(local) > 63 or not _NAME.fullmatch(local):
        return (
            f"label key {key!r}: name must be 1-63 characters of letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def validate_value(value: str) -> str | None:
    """Why ``value`` is not a valid label value (empty, or ≤63 name characters), or ``None``."""
    if value == "" or (len(value) <= 63 and _NAME.fullmatch(value)):
        return None
    return (
        f"label value {value!r} must be empty or 1-63 characters of letters, digits, '-', '_' and '.', "
        "starting and ending with a letter or digit"
    )


def is_dns_subdomain(name: str) -> bool:
    """A Kubernetes object name (RFC 1123 subdomain, ≤253 characters)."""
    return len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name) is not None


def is_dns_label(name: str) -> bool:
    """A Kubernetes namespace name (RFC 1123 label, ≤63 characters)."""
    return len(name) <= 63 and _DNS_LABEL.fullmatch(name) is not None


def is_dns_1035_label(name: str) -> bool:
    """A Kubernetes Service name (RFC 1035 label: starts with a letter, ≤63 characters)."""
    return len(name) <= 63 and _DNS_1035_LABEL.fullmatch(name) is not None
