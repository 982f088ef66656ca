"""TLS of the node's HTTP proxy ports, as the agent reports it (pure): what each port does with TLS, and
every reason a port refuses connections, tied to the policy and field path it comes from.

::

    AppliedView ─► tls_ports ─► port → PortTLS (l7xds.tls.merge of its members)
          │                         └─ members that disagree → PortTLS(problem=...) + a PolicyProblem
          │                            for each policy involved, naming the others (fail closed)
          └────► secret_problems ─► a PolicyProblem per terminatingTLS/originatingTLS secret that is
                                    missing or malformed (fail closed)

The agent's status carries these problems (``policy_errors``) so that the Kubernetes controller lists the
node as failing *in the policy's own status*, with the field path, and ``l7gate status`` / ``policy get``
show them per policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from l7.agent.services import AppliedView
from l7.resolve.types import L7RuleSet, Origin
from l7xds.tls import PortTLS, TLSRef, TLSSecrets, merge, secret_problems

REFUSES = "the port refuses connections"


@dataclass(frozen=True, order=True)
class PolicyProblem:
    """Why one policy's rule is not enforced as written on this node (its traffic is refused)."""

    policy: str  # Kind/namespace/name
    path: str  # field path in the policy document
    message: str

    def __str__(self) -> str:
        return f"{self.policy} {self.path}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"policy": self.policy, "path": self.path, "message": self.message}


def member_tls(member: L7RuleSet) -> PortTLS | None:
    if not member.tls:
        return None
    return PortTLS(
        member.server_names,
        TLSRef.of(member.terminating) if member.terminating is not None else None,
        TLSRef.of(member.originating) if member.originating is not None else None,
    )


def _origins(view: AppliedView) -> dict[str, list[Origin]]:
    """L7 rule set key → the local rules (policy, field path) it comes from."""
    out: dict[str, list[Origin]] = {}
    for resolved in view.local:
        for entry in (*resolved.ingress.allows, *resolved.egress.allows):
            if entry.l7 is not None and entry.origin not in out.setdefault(entry.l7.key, []):
                out[entry.l7.key].append(entry.origin)
    return out


def describe(tls: PortTLS | None) -> str:
    """A member's TLS in the words of the policy."""
    if tls is None:
        return "plaintext HTTP"
    parts = []
    if tls.terminating is not None:
        parts.append(f"terminatingTLS {tls.terminating.where}")
    if tls.originating is not None:
        parts.append(f"originatingTLS {tls.originating.where}")
    if tls.server_names and not parts:
        parts.append("serverNames (TLS passed through)")
    return ", ".join(parts) or "TLS"


def _disagreement(
    port: int, members: tuple[L7RuleSet, ...], origins: Mapping[str, list[Origin]], reason: str
) -> Iterator[PolicyProblem]:
    """One problem per rule of the port, naming the rules that disagree with it and how."""
    kinds = {m.key: describe(member_tls(m)) for m in members}
    rules = [(o, kinds[m.key]) for m in members for o in origins.get(m.key, ())]
    for origin, kind in rules:
        others = [f"{o.policy} {o.path} ({k})" for o, k in rules if o != origin and k != kind]
        others = others or [f"{o.policy} {o.path}" for o, _ in rules if o != origin]
        yield PolicyProblem(
            origin.policy,
            origin.path,
            f"{reason}: this rule ({kind}) and {'; '.join(others) or 'another rule'} select the same "
            f"peer and port (proxy port {port}); {REFUSES}",
        )


def tls_ports(view: AppliedView) -> tuple[dict[int, PortTLS], list[PolicyProblem]]:
    """The TLS of each HTTP proxy port (see :func:`l7xds.tls.merge`), and the problems of the ports whose
    members disagree (such a port refuses every connection: :attr:`PortTLS.problem`)."""
    out: dict[int, PortTLS] = {}
    problems: list[PolicyProblem] = []
    origins: dict[str, list[Origin]] | None = None
    for port, members in sorted(view.ports_of("http").items()):
        try:
            merged = merge(member_tls(m) for m in members)
        except ValueError as exc:
            merged = PortTLS(problem=str(exc))
            origins = _origins(view) if origins is None else origins
            problems += _disagreement(port, members, origins, str(exc))
        if merged is not None:
            out[port] = merged
    return out, sorted(set(problems))


def secret_errors(view: AppliedView, secrets: TLSSecrets) -> list[PolicyProblem]:
    """Every TLS secret reference of the local endpoints' rules that cannot be used, with the policy and
    field path (``spec.egress[0].toPorts[0].terminatingTLS.secret``; ``[tls.key]`` for one item)."""
    found: set[PolicyProblem] = set()
    for resolved in view.local:
        for entry in (*resolved.ingress.allows, *resolved.egress.allows):
            rule_set = entry.l7
            if rule_set is None or not rule_set.tls:
                continue
            for name, context, terminating in (
                ("terminatingTLS", rule_set.terminating, True),
                ("originatingTLS", rule_set.originating, False),
            ):
                if context is None:
                    continue
                for item, problem in secret_problems(TLSRef.of(context), secrets, terminating=terminating):
                    where = f"{entry.origin.path}.{name}.secret" + (f"[{item}]" if item else "")
                    found.add(PolicyProblem(entry.origin.policy, where, f"{problem} ({REFUSES})"))
    return sorted(found)


def as_dicts(problems: Iterable[PolicyProblem]) -> list[dict[str, str]]:
    return [p.as_dict() for p in problems]
