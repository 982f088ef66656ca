"""``policy trace`` for TLS on an Envoy port: serverNames (SNI) and TLS interception, decided the way
the node's Envoy decides (see :mod:`l7xds.tls` and :mod:`l7.agent.envoy_tls`), offline.

::

    the flow's HTTP entries ─► none with TLS ─► None (plaintext HTTP)
                            ─► plaintext and TLS rules, or different secrets ─► refused (every connection)
                            ─► serverNames: the SNI (--sni, or the request's host when Envoy intercepts)
                               must match one pattern; no SNI is refused; a member without names lets
                               any connection through
                            ─► intercepting: the HTTP rules judge the decrypted requests, whose host must
                               be one of the serverNames (no domain fronting through the interception)

Secrets cannot be read offline: the trace says that a missing or malformed one makes the port refuse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import re2

from l7.policy import servernames
from l7.resolve import Entry


@dataclass(frozen=True)
class TLSVerdict:
    """What the TLS step of a port decides for one connection."""

    refused: str | None  # why the connection is refused; None: it goes on
    policy: str | None  # the rule that decided (refused: one of the rules involved)
    rule: str | None
    detail: str
    notes: tuple[str, ...] = ()
    intercepts: bool = False  # Envoy terminates the TLS: the HTTP rules see the requests
    server_names: tuple[str, ...] = ()  # intercepting: the request's host must match one


def name_matches(pattern: str, name: str) -> bool:
    """Whether the SNI ``name`` matches one serverNames ``pattern`` (Envoy's RE2, whole value)."""
    return re2.fullmatch(servernames.regex(pattern), name) is not None


def sni_of_host(host: str | None) -> str | None:
    """The SNI a client sends for a request's host: the name without its port; none for an address."""
    if not host:
        return None
    name = host.strip()
    if name.startswith("["):
        return None  # [v6]:port
    name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name if name and "/" not in name else None  # shop/web: a pod, no name a client sends
    return None


def _where(entry: Entry) -> str:
    return f"{entry.origin.policy} {entry.origin.path}"


def _context(entry: Entry) -> tuple[str, str]:
    assert entry.l7 is not None
    out = []
    for name, context in (("terminatingTLS", entry.l7.terminating), ("originatingTLS", entry.l7.originating)):
        if context is not None:
            out.append(f"{name} {context.secret.namespace or 'default'}/{context.secret.name}")
    return ", ".join(out), repr((entry.l7.terminating, entry.l7.originating))


def _secret_notes(entry: Entry) -> tuple[str, ...]:
    described, _ = _context(entry)
    if not described:
        return ()
    return (
        f"{described}: secrets are not read offline; a missing or malformed one makes the port refuse "
        "every connection (the agent's status and the policy's status name it)",
    )


def evaluate_tls(entries: Sequence[Entry], sni: str | None, host: str | None) -> TLSVerdict | None:
    """The TLS step of one flow redirected to Envoy (``entries``: the HTTP entries that match it); None
    when the port has no TLS rules. ``sni``: the client's SNI (--sni); when None and Envoy intercepts,
    the SNI a client sends for the request's ``host``."""
    tls = [e for e in entries if e.l7 is not None and e.l7.tls]
    if not tls:
        return None
    plain = [e for e in entries if e.l7 is not None and not e.l7.tls]
    if plain:
        return TLSVerdict(
            f"plaintext HTTP rules ({_where(plain[0])}) and TLS rules ({_where(tls[0])}) on the same port "
            "and peer: the port refuses every connection",
            tls[0].origin.policy,
            tls[0].origin.path,
            "",
        )
    contexts = {_context(e)[1]: e for e in tls}
    if len(contexts) > 1:
        a, b = list(contexts.values())[:2]
        return TLSVerdict(
            f"different terminatingTLS/originatingTLS secrets ({_where(a)}: {_context(a)[0] or 'none'}; "
            f"{_where(b)}: {_context(b)[0] or 'none'}) on the same port and peer: the port refuses every "
            "connection",
            a.origin.policy,
            a.origin.path,
            "",
        )
    first = tls[0]
    assert first.l7 is not None
    intercepts = first.l7.terminating is not None
    notes = _secret_notes(first)
    if sni is None and intercepts:
        sni = sni_of_host(host)
    unnamed = next((e for e in tls if e.l7 is not None and not e.l7.server_names), None)
    names = tuple(dict.fromkeys(n for e in tls if e.l7 is not None for n in e.l7.server_names))
    how = "terminated by Envoy" if intercepts else "passed through unread"
    if unnamed is not None:
        detail = f"TLS {how}; any SNI (or none) is accepted ({_where(unnamed)} lists no serverNames)"
        return TLSVerdict(None, unnamed.origin.policy, unnamed.origin.path, detail, notes, intercepts)
    if sni is None:
        return TLSVerdict(
            f"serverNames {', '.join(names)} apply on this port: a connection without SNI is refused "
            "(pass --sni NAME)",
            first.origin.policy,
            f"{first.origin.path}.serverNames",
            "",
            notes,
        )
    for entry in tls:
        assert entry.l7 is not None
        for k, pattern in enumerate(entry.l7.server_names):
            if name_matches(pattern, sni):
                rule = f"{entry.origin.path}.serverNames[{k}]"
                detail = f"TLS SNI {sni} allowed by {entry.origin.policy} {rule} ({pattern}); TLS {how}"
                return TLSVerdict(None, entry.origin.policy, rule, detail, notes, intercepts, names)
    return TLSVerdict(
        f"TLS SNI {sni} matches no serverNames ({', '.join(names)}): the connection is refused",
        first.origin.policy,
        f"{first.origin.path}.serverNames",
        "",
        notes,
    )


def host_refusal(verdict: TLSVerdict, host: str | None) -> str | None:
    """On an intercepting port with serverNames: why a request whose host is none of them gets 403."""
    if not verdict.intercepts or not verdict.server_names:
        return None
    name = (host or "").strip()
    bare = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    if any(name_matches(p, bare) for p in verdict.server_names):
        return None
    return (
        f"host {name or '(none)'} is none of the serverNames ({', '.join(verdict.server_names)}): "
        "403 Access denied (no domain fronting through the interception)"
    )
