"""``policy trace``: which rule allows or denies one flow or request, offline.

::

    policies + endpoints file ──► identities (endpoints, policy CIDRs, the destination's FQDN set)
                              ──► Resolver ──► decide(source, egress) ─┬─► L7: HTTP request / DNS name
                                           ──► decide(dest, ingress) ──┘    against the merged rules

HTTP rules are evaluated the way the node's Envoy evaluates the translator's routes
(tests/security/test_trace_parity.py sends the same requests through a real Envoy and through
:func:`evaluate_rules`): CONNECT and ambiguous paths (:data:`l7.policy.regex.AMBIGUOUS_PATH`) are refused
before any rule; method, path (query string included) and host are RE2 regexes matched against the whole
value, the path as Envoy normalises it (:func:`envoy_path`), the host with the translator's own regex
(:func:`l7.policy.regex.envoy_host_regex`); ``headers`` entries are an exact value or presence, names
case-insensitive, a repeated header joined into one value first (:func:`joined_headers`); a
``headerMatches`` mismatch passes when the entry has a ``mismatch`` action and fails without one. Secrets
cannot be read offline: a ``headerMatches`` entry with a secret and no ``mismatch`` action cannot match
(the trace says so).

``--to`` is an endpoint (``NAME`` or ``NAMESPACE/NAME``), a node name (``host`` from its own node, its
node-labels identity from the others), a Service (``NAMESPACE/NAME``, or ``NAME`` in the source's
namespace first: the first pod it selects, or its first backend IP for a Service without a selector), an
IP or a DNS name. A DNS name is a name listed under the endpoints file's ``fqdns:`` or a dotted name
(``api.example.com``; traced as an outside name with no address, and the trace says it is not in the
endpoints file); any other name is an error, so that a misspelled pod is not traced as an outside peer.
A bare ``NAME`` that several namespaces have is an error too: ``NAMESPACE/NAME`` picks one.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import re2

from l7.endpoints import Endpoint, EndpointsFile, Service, Topology, build_topology
from l7.errors import L7GateError
from l7.identity import IdentityAllocator, ReservedIdentity
from l7.policy import model
from l7.policy.documents import Policy
from l7.policy.fqdn import NameMatcher
from l7.policy.headers import parse_header
from l7.policy.regex import AMBIGUOUS_PATH, envoy_host_regex
from l7.resolve import (
    Decision,
    Direction,
    Entry,
    Reason,
    ResolvedNode,
    Resolver,
    Verdict,
    decide,
    fqdn_selectors,
    lookup_identity,
    policy_prefixes,
)
from l7.trace_tls import evaluate_tls, host_refusal


class TraceError(L7GateError):
    """The trace cannot be run: an unknown endpoint, a malformed port or request."""


@dataclass(frozen=True)
class HTTPRequest:
    method: str
    path: str
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class L7Result:
    allowed: bool
    rule: str | None  # field path of the rule that allowed it
    policy: str | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """The verdict of one direction: the source's egress or the destination's ingress."""

    direction: str
    endpoint: str
    peer: str
    peer_identity: int
    verdict: str  # "allowed" | "denied"
    layer: str  # "l3l4" | "http" | "dns"
    reason: str
    policy: str | None
    rule: str | None
    detail: str
    notes: tuple[str, ...] = ()
    default_deny_by: tuple[str, ...] = ()  # a default deny: the policies that select this direction


@dataclass(frozen=True)
class TraceResult:
    verdict: str
    layer: str
    policy: str | None
    rule: str | None
    source: str
    destination: str
    port: int
    protocol: str
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = field(default=())
    port_name: str | None = None  # --port NAME: the destination's named port that gave ``port``

    @property
    def allowed(self) -> bool:
        return self.verdict == "allowed"

    def to_json(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "layer": self.layer,
            "policy": self.policy,
            "rule": self.rule,
            "source": self.source,
            "destination": self.destination,
            "port": self.port,
            "port_name": self.port_name,
            "protocol": self.protocol,
            "default_deny_by": next(
                (list(s.default_deny_by) for s in self.steps if s.verdict == "denied"), []
            ),
            "notes": list(self.notes),
            "directions": {
                s.direction: {
                    "endpoint": s.endpoint,
                    "peer": s.peer,
                    "peer_identity": s.peer_identity,
                    "verdict": s.verdict,
                    "layer": s.layer,
                    "reason": s.reason,
                    "policy": s.policy,
                    "rule": s.rule,
                    "detail": s.detail,
                    "default_deny_by": list(s.default_deny_by),
                    "notes": list(s.notes),
                }
                for s in self.steps
            },
        }

    def to_text(self) -> str:
        named = f" (port {self.port_name})" if self.port_name else ""
        lines = [f"{self.source} → {self.destination} {self.port}/{self.protocol}{named}"]
        for s in self.steps:
            lines.append(f"  {s.direction:<7} {s.endpoint} (peer {s.peer}, identity {s.peer_identity})")
            lines.append(f"          {s.verdict} at {s.layer}: {s.detail}")
            lines += [f"          note: {n}" for n in s.notes]
        lines += [f"note: {n}" for n in self.notes]
        by = f" by {self.policy} {self.rule}" if self.policy and self.rule else ""
        lines.append(f"verdict: {self.verdict.upper()} ({self.layer}){by}")
        return "\n".join(lines)


# -- L7 evaluation -----------------------------------------------------------------------------------


def _full(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    try:
        return re2.fullmatch(("(?i)" if ignore_case else "") + pattern, value) is not None
    except re2.error:
        return False


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0)


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")[1:]
    for k, segment in enumerate(segments):
        last = k == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def envoy_path(target: str) -> str:
    """The ``:path`` Envoy's listener matches and forwards for the request target ``target``: escaped
    slashes unescaped (``%2F`` → ``/``, ``%5C`` → ``\\``), then normalised (RFC 3986: ``%XX`` of an
    unreserved character decoded, ``\\`` read as ``/``, ``.`` and ``..`` segments resolved), then
    repeated slashes merged. The query string is left as it is."""
    path, question, query = target.partition("?")
    path = re.sub(r"%2[fF]", "/", path)
    path = re.sub(r"%5[cC]", "\\\\", path)
    path = _ESCAPE.sub(_decode_unreserved, path).replace("\\", "/")
    path = re.sub("/{2,}", "/", _remove_dot_segments(path if path.startswith("/") else "/" + path))
    return path + question + query


def joined_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request's headers as Envoy's routes see them: names in lower case, values without surrounding
    white space, a header sent more than once joined into one value (``,``; ``cookie``: ``; ``)."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.strip().lower(), []).append(value.strip(" \t"))
    return {name: ("; " if name == "cookie" else ",").join(v) for name, v in values.items()}


def refusal(request: HTTPRequest) -> str | None:
    """Why Envoy refuses ``request`` before any rule is looked at (403), or None."""
    if request.method == "CONNECT":
        return "CONNECT is always denied"
    path = envoy_path(request.path).partition("?")[0]
    if _full(AMBIGUOUS_PATH, path):
        return (
            f"path {path}: a ';', an encoded ';' or a double-encoded '.', '/', '\\' or ';' is always denied "
            "(backends may resolve it to another path than the one checked)"
        )
    return None


def http_rule_matches(rule: model.HTTPRule, request: HTTPRequest) -> tuple[bool, tuple[str, ...]]:
    """Whether one HTTP rule allows ``request``, with notes on what could not be evaluated. The rule is
    matched as Envoy matches the translator's route (see :func:`envoy_path`, :func:`joined_headers`)."""
    notes: list[str] = []
    if rule.method and not _full(rule.method, request.method):
        return False, ()
    if rule.path and not _full(rule.path, envoy_path(request.path)):
        return False, ()
    if rule.host and not _full(envoy_host_regex(rule.host), (request.host or "").strip()):
        return False, ()
    headers = joined_headers(request.headers)
    for entry in rule.headers or ():
        wanted, expected = parse_header(entry)
        present = headers.get(wanted.lower())
        if present is None or (expected is not None and expected != present):
            return False, ()
    for match in rule.header_matches or ():
        present = headers.get(match.name.lower())
        if match.secret is not None:
            secret = f"{match.secret.namespace or 'default'}/{match.secret.name}"
            if match.mismatch is None:
                notes.append(
                    f"header {match.name}: secret {secret} cannot be read offline; the rule cannot match"
                )
                return False, tuple(notes)
            notes.append(
                f"header {match.name}: secret {secret} not checked offline; mismatch {match.mismatch}"
            )
            continue
        ok = present is not None and (match.value is None or match.value == present)
        if not ok:
            if match.mismatch is None:
                return False, ()
            notes.append(f"header {match.name} mismatch: action {match.mismatch} (request passes)")
    return True, tuple(notes)


def evaluate_rules(
    rules: Sequence[model.HTTPRule], request: HTTPRequest
) -> tuple[int | None, tuple[str, ...]]:
    """Envoy's verdict on ``request`` for the routes of one rule set: the index of the first rule that
    allows it (``-1``: the set is empty and allows every request), or None (``403``), with notes."""
    refused = refusal(request)
    if refused is not None:
        return None, (refused,)
    if not rules:
        return -1, ()
    notes: list[str] = []
    for k, rule in enumerate(rules):
        ok, why = http_rule_matches(rule, request)
        notes += why
        if ok:
            return k, tuple(notes)
    return None, tuple(notes)


def dns_rule_matches(rule: model.DNSRule, name: str) -> bool:
    if rule.match_name is not None:
        return NameMatcher(match_name=rule.match_name).matches(name)
    if rule.match_pattern is not None:
        return NameMatcher(match_pattern=rule.match_pattern).matches(name)
    return False


def evaluate_http(entries: Sequence[Entry], request: HTTPRequest) -> L7Result:
    notes: list[str] = []
    for entry in entries:
        assert entry.l7 is not None
        index, why = evaluate_rules(entry.l7.http, request)
        notes += why
        if index is not None:
            rule = f"{entry.origin.path}.rules.http" + (f"[{index}]" if index >= 0 else "")
            return L7Result(True, rule, entry.origin.policy, tuple(notes))
        if refusal(request) is not None:
            break
    return L7Result(False, None, None, tuple(dict.fromkeys(notes)))


def evaluate_dns(entries: Sequence[Entry], name: str) -> L7Result:
    for entry in entries:
        assert entry.l7 is not None
        for k, rule in enumerate(entry.l7.dns):
            if dns_rule_matches(rule, name):
                return L7Result(True, f"{entry.origin.path}.rules.dns[{k}]", entry.origin.policy)
    return L7Result(False, None, None)


# -- the trace ---------------------------------------------------------------------------------------


_PORT_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,13}[a-z0-9])?")


def parse_port(text: str) -> tuple[int | str, str]:
    """``80/TCP`` → ``(80, "TCP")``; ``53`` → ``(53, "TCP")``; ``http/TCP`` → ``("http", "TCP")`` (a named
    port: the destination endpoint's ``ports`` give its number, see :func:`trace`)."""
    number, _, protocol = text.partition("/")
    protocol = (protocol or "TCP").upper()
    if protocol not in ("TCP", "UDP", "SCTP", "ICMP", "ICMPV6"):
        raise TraceError(f"--port {text!r}: protocol must be TCP, UDP, SCTP, ICMP or ICMPv6")
    name = number.lower()
    if not number.isdigit() and _PORT_NAME.fullmatch(name) and any(c.isalpha() for c in name):
        return name, protocol
    if not number.isdigit() or not 0 <= int(number) <= 65535:
        raise TraceError(f"--port {text!r}: expected N/PROTO with N in 0-65535, or NAME/PROTO (a named port)")
    return int(number), protocol


def parse_header_option(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise TraceError(f"-H {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


@dataclass(frozen=True)
class _Peer:
    text: str
    identity: int
    endpoint: Endpoint | None
    learned: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ip: str | None = None  # looked up in the ipcache when ``identity`` is -1 (default: ``text``)
    notes: tuple[str, ...] = ()


def _describe(decision: Decision, endpoint: str, direction: Direction, selected_by: Sequence[str]) -> str:
    where = f"{endpoint} {direction}"
    if decision.reason is Reason.NO_POLICY:
        return f"no policy selects {where}: allowed by default"
    if decision.reason is Reason.DEFAULT_ALLOW:
        return (
            f"policies select {where} but disable default deny (enableDefaultDeny: false); nothing denies it"
        )
    if decision.reason is Reason.DEFAULT_DENY:
        return (
            f"default deny: policies select {where} ({', '.join(selected_by)}) and no rule allows this flow"
        )
    first = decision.origins[0] if decision.origins else None
    if decision.reason is Reason.DENY_RULE:
        return f"denied by {first}"
    if decision.reason is Reason.ALLOW_RULE:
        return f"allowed by {first}"
    kinds = sorted({s.kind.upper() for s in decision.l7})
    return f"redirected to the {'/'.join(kinds)} proxy by {first}"


def _step(  # noqa: PLR0917
    resolved: ResolvedNode,
    endpoint: Endpoint,
    direction: Direction,
    peer: _Peer,
    flow: tuple[int, str],
    request: tuple[HTTPRequest | None, str | None, str | None],
) -> Step:
    port, protocol = flow
    http, dns, sni = request
    decision = decide(resolved, endpoint.key, direction, peer.identity, protocol, port)
    policy_dir = resolved.endpoint(endpoint.key).direction(direction)
    detail = _describe(decision, endpoint.key, direction, policy_dir.selected_by)
    deny_by = policy_dir.selected_by if decision.reason is Reason.DEFAULT_DENY else ()
    origin = decision.origins[0] if decision.origins else None
    policy, rule = (origin.policy, origin.path) if origin else (None, None)

    def make(  # noqa: PLR0917
        verdict: str,
        layer: str,
        reason: str,
        policy: str | None,
        rule: str | None,
        detail: str,
        notes: tuple[str, ...] = (),
    ) -> Step:
        return Step(
            str(direction),
            endpoint.key,
            peer.text,
            peer.identity,
            verdict,
            layer,
            reason,
            policy,
            rule,
            detail,
            notes,
            deny_by,
        )

    if decision.verdict is not Verdict.REDIRECT:
        verdict = "allowed" if decision.verdict is Verdict.ALLOW else "denied"
        return make(verdict, "l3l4", str(decision.reason), policy, rule, detail)
    entries = [e for e in policy_dir.allows if e.l7 is not None and e.matches(peer.identity, protocol, port)]
    kinds = {e.l7.kind for e in entries if e.l7 is not None}
    flow_text = f"{endpoint.key} {direction} {port}/{protocol}"
    _check_request_kind(kinds, http is not None, dns is not None, flow_text, origin, sni=sni is not None)
    if "dns" in kinds and dns is not None:
        result = evaluate_dns([e for e in entries if e.l7 is not None and e.l7.kind == "dns"], dns)
        if result.allowed:
            detail += f"; DNS query {dns} allowed by {result.policy} {result.rule}"
            return make("allowed", "dns", "l7", result.policy, result.rule, detail)
        detail += f"; DNS query {dns} matches no DNS rule: REFUSED"
        return make("denied", "dns", "l7", policy, rule, detail)
    http_entries = [e for e in entries if e.l7 is not None and e.l7.kind == "http"]
    tls = evaluate_tls(http_entries, sni, http.host if http is not None else None) if http_entries else None
    if tls is None and sni is not None and http_entries:
        raise TraceError(
            f"--sni: {flow_text} is redirected to Envoy for plaintext HTTP rules (by {origin}): "
            "no serverNames or terminatingTLS applies, there is no TLS to look at"
        )
    if tls is not None:
        if tls.refused is not None:
            detail += f"; {tls.refused}"
            return make("denied", "tls", "l7", tls.policy, tls.rule, detail, tls.notes)
        detail += f"; {tls.detail}"
        if not tls.intercepts or http is None:
            hint = (
                "pass --http METHOD PATH to evaluate the HTTP rules on the decrypted requests"
                if tls.intercepts
                else "the HTTP requests inside are not seen (no terminatingTLS): HTTP rules do not apply"
            )
            return make("allowed", "tls", "l7", tls.policy, tls.rule, detail, (*tls.notes, hint))
        refused = host_refusal(tls, http.host)
        if refused is not None:
            detail += f"; {http.method} {http.path}: {refused}"
            return make("denied", "http", "l7", tls.policy, tls.rule, detail, tls.notes)
    if "http" in kinds and http is not None:
        result = evaluate_http(http_entries, http)
        result = L7Result(
            result.allowed, result.rule, result.policy, (*(tls.notes if tls else ()), *result.notes)
        )
        text = f"{http.method} {http.path}"
        if result.allowed:
            detail += f"; {text} allowed by {result.policy} {result.rule}"
            return make("allowed", "http", "l7", result.policy, result.rule, detail, result.notes)
        detail += f"; {text} matches no HTTP rule: 403 Access denied"
        return make("denied", "http", "l7", policy, rule, detail, result.notes)
    layer = "dns" if "dns" in kinds else "http"
    hint = "--dns NAME" if layer == "dns" else "--http METHOD PATH"
    note = f"L4 allowed; {layer.upper()} rules apply to the content: pass {hint} to evaluate them"
    return make("allowed", "l3l4", "l7", policy, rule, detail, (note,))


def _check_request_kind(
    kinds: set[str], http: bool, dns: bool, flow: str, origin: object, *, sni: bool = False
) -> None:
    """A request of the wrong kind for the proxy the flow goes to is a usage error, not a verdict."""
    if (http or sni) and "http" not in kinds and "dns" in kinds:
        raise TraceError(
            f"--{'http' if http else 'sni'}: {flow} is redirected to the DNS proxy (by {origin}), "
            "not to Envoy: an HTTP request is never evaluated there (use --dns NAME)"
        )
    if dns and "dns" not in kinds and "http" in kinds:
        raise TraceError(
            f"--dns: {flow} is redirected to Envoy for HTTP rules (by {origin}), not to the DNS proxy "
            "(use --http METHOD PATH)"
        )


def _named_port(peer: _Peer, name: str) -> int:
    """The number of the destination endpoint's port ``name`` (Cilium resolves a named port with the
    destination's container ports)."""
    if peer.endpoint is None:
        raise TraceError(f"--port {name}: a named port needs a destination endpoint; {peer.text} is not one")
    number = peer.endpoint.named_port(name)
    if number is None:
        have = ", ".join(f"{n}={p}" for n, p in peer.endpoint.ports) or "none"
        raise TraceError(f"--port {name}: {peer.endpoint.key} has no port named {name!r} (its ports: {have})")
    return number


def trace(  # noqa: PLR0917  (the CLI's arguments)
    policies: Sequence[Policy],
    endpoints: EndpointsFile,
    source: str,
    destination: str,
    port: int | str,
    protocol: str,
    *,
    http: HTTPRequest | None = None,
    dns: str | None = None,
    sni: str | None = None,
    node: str | None = None,
    allocator: IdentityAllocator | None = None,
) -> TraceResult:
    allocator = allocator or IdentityAllocator()
    topology = build_topology(endpoints, allocator)
    src = _find_endpoint(topology, source, "--from")
    if src is None:
        names = [e.key if "/" in source else e.name for e in topology.endpoints]
        raise TraceError(
            f"--from {source!r}: no such endpoint (use NAME or NAMESPACE/NAME){_did_you_mean(source, names)}"
        )
    perspective = node or src.node
    if perspective is not None and topology.node(perspective) is None and topology.nodes:
        raise TraceError(f"--node {perspective!r}: no such node in the endpoints file")
    peer = _destination(policies, topology, allocator, destination, perspective, namespace=src.namespace)
    port_name = port if isinstance(port, str) else None
    if isinstance(port, str):
        port = _named_port(peer, port)
    resolver = Resolver(allocator, perspective, all_endpoints=True)
    resolved = resolver.resolve(policies, topology, dict(peer.learned))
    if peer.endpoint is None and not peer.learned:
        peer = _Peer(peer.text, _ip_identity(resolved, topology, peer), None, ip=peer.ip, notes=peer.notes)
    flow, request = (port, protocol), (http, dns, sni)
    steps = [_step(resolved, src, Direction.EGRESS, peer, flow, request)]
    if peer.endpoint is not None and steps[0].verdict == "allowed":
        src_peer = _Peer(src.key, src.identity, src)
        steps.append(_step(resolved, peer.endpoint, Direction.INGRESS, src_peer, flow, request))
    deciding = next((s for s in steps if s.verdict == "denied"), None)
    if deciding is None:
        deciding = next((s for s in reversed(steps) if s.layer != "l3l4"), None) or next(
            (s for s in reversed(steps) if s.policy), steps[-1]
        )
    notes = list(peer.notes)
    if peer.endpoint is not None and steps[0].verdict == "denied":
        notes.append("the source's egress denies the flow; the destination's ingress was not evaluated")
    return TraceResult(
        verdict=deciding.verdict,
        layer=deciding.layer,
        policy=deciding.policy,
        rule=deciding.rule,
        source=src.key,
        destination=peer.text,
        port=port,
        protocol=protocol,
        steps=tuple(steps),
        notes=tuple(notes),
        port_name=port_name,
    )


def _ip_identity(resolved: ResolvedNode, topology: Topology, peer: _Peer) -> int:
    return lookup_identity(resolved, peer.ip or peer.text) if peer.identity < 0 else peer.identity


def _destination(
    policies: Sequence[Policy],
    topology: Topology,
    allocator: IdentityAllocator,
    text: str,
    perspective: str | None,
    *,
    namespace: str = "default",
) -> _Peer:
    endpoint = topology.find(text)  # ambiguous bare names: reported below, after nodes and Services
    if endpoint is not None:
        return _Peer(endpoint.key, endpoint.identity, endpoint)
    known = topology.node(text)
    if known is not None:
        local = perspective is not None and known.name == perspective
        if local:
            host = ReservedIdentity.HOST
            return _Peer(f"node {known.name} ({host.label})", int(host), None)
        return _Peer(f"node {known.name} ({ReservedIdentity.REMOTE_NODE.label})", known.identity, None)
    # A bare Service name resolves in the source's namespace first (as cluster DNS does), then anywhere.
    service = (None if "/" in text else topology.service(f"{namespace}/{text}")) or topology.service(text)
    if service is not None:
        return _service_peer(topology, service, text)
    if "/" not in text:
        _check_unambiguous(topology, text, "--to")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is not None:
        ip = str(address)
        by_ip = topology.by_ip(ip)
        if by_ip is not None:
            return _Peer(by_ip.key, by_ip.identity, by_ip)
        names = tuple(name for name, ips in topology.fqdns if ip in ips)
        if names:
            return _Peer(ip, _fqdn_identity(policies, allocator, names, ip), None, ((ip, names),))
        return _Peer(ip, -1, None)  # resolved through the ipcache (nodes, CIDRs, world)
    if "/" in text:
        keys = [e.key for e in topology.endpoints] + [s.key for s in topology.services]
        raise TraceError(f"--to {text!r}: no endpoint or service named {text!r}{_did_you_mean(text, keys)}")
    known_name = any(name == text.lower().rstrip(".") for name, _ in topology.fqdns)
    if not known_name and not _looks_like_dns_name(text):
        candidates = [
            *(e.name for e in topology.endpoints),
            *(n.name for n in topology.nodes),
            *(s.name for s in topology.services),
            *(name for name, _ in topology.fqdns),
        ]
        raise TraceError(
            f"--to: no endpoint, node, service or IP named {text!r}{_did_you_mean(text, candidates)}; "
            "a DNS name needs a dot or an entry under fqdns: in the endpoints file"
        )
    ips = topology.fqdn_ips(text)
    first = ips[0] if ips else None
    identity = _fqdn_identity(policies, allocator, (text,), first)
    if first is None:
        note = (
            f"{text} is not known to the endpoints file (not listed under fqdns:): "
            "traced as an outside name with no address"
        )
        return _Peer(text, identity, None, notes=(note,))
    return _Peer(f"{text} ({first})", identity, None, ((first, (text,)),))


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _looks_like_dns_name(text: str) -> bool:
    """A dotted host name (``api.example.com``, trailing dot allowed) whose last label is not numeric."""
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    return (
        len(labels) > 1
        and len(name) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def _find_endpoint(topology: Topology, ref: str, option: str) -> Endpoint | None:
    """``Topology.find`` that reports a bare name several namespaces have instead of not finding it."""
    found = topology.find(ref)
    if found is None and "/" not in ref:
        _check_unambiguous(topology, ref, option)
    return found


def _check_unambiguous(topology: Topology, name: str, option: str) -> None:
    """Raise when pods or Services of several namespaces are named ``name``."""
    keys = sorted(
        {e.key for e in topology.endpoints if e.name == name}
        | ({s.key for s in topology.services if s.name == name} if option == "--to" else set())
    )
    if len(keys) > 1:
        raise TraceError(f"{option} {name!r}: ambiguous: {', '.join(keys)} — use NAMESPACE/NAME")


def _did_you_mean(text: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(text, sorted(set(candidates)), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _service_peer(topology: Topology, service: Service, text: str) -> _Peer:
    """A Service as a destination: the first pod it selects, else its first backend IP."""
    pods = topology.service_pods(service)
    if pods:
        return _Peer(f"{pods[0].key} (service {service.key})", pods[0].identity, pods[0])
    if service.backends:
        ip = service.backends[0]
        by_ip = topology.by_ip(ip)
        if by_ip is not None:
            return _Peer(f"{by_ip.key} (service {service.key})", by_ip.identity, by_ip)
        return _Peer(f"{ip} (service {service.key})", -1, None, ip=ip)
    kind = "selects no endpoint" if service.selector is not None else "has no backends"
    raise TraceError(f"--to {text!r}: service {service.key} {kind}")


def _fqdn_identity(
    policies: Sequence[Policy], allocator: IdentityAllocator, names: Sequence[str], ip: str | None
) -> int:
    chosen = [s.text for s in fqdn_selectors(policies) if any(s.matches_name(n) for n in names)]
    address = ipaddress.ip_address(ip) if ip else None
    return allocator.fqdn_identity(chosen, address, policy_prefixes(policies)).id
