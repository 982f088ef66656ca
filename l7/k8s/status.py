"""Status of a policy object, as pure functions: what one node's controller wants it to say.

::

    status:
      observedGeneration: 3
      enforcingNodes: 41               # nodes that enforce generation 3 (a printer column)
      failingNodes: 1                  # nodes that tried and failed (a printer column)
      failures:                        # the failing nodes with their errors, at most MAX_FAILURES
      - {node: k8s-w7, message: "Envoy rejected the HTTP configuration ..."}
      conditions:
      - {type: Valid, status: "False", reason: Invalid, message: "spec.egress[0].toCIDR[0]: ...; ..."}
      - {type: Enforced, status: "False", reason: Failed, message: "41 nodes enforce generation 3, 1 fails"}
      errors: [{path: spec.egress[0].toCIDR[0], message: "..."}]      # every validation error

The status stays the same size however many nodes there are (no per-node map): like Cilium's aggregated
policy status, it holds counts and only the failing nodes, bounded. Every node's controller adds its own
part to the counts: it remembers what it counted (a :class:`Counted`, per object and generation) and
moves its own contribution when its view changes (enforcing → failing, ...). The patch carries the
object's ``resourceVersion``, so two nodes writing at once cannot lose each other's count: one gets 409
and recounts on the fresh object the watch brings. A new generation starts the counts from zero (every
node counts itself again once it enforces the new spec). A node deleted from the cluster stops counting
itself, and a failing one is taken off the list (and the count) by any other node; an enforcing node whose
agent vanished with it stays counted until the next generation (no list of nodes is kept to tell).

:func:`status_patch` returns ``None`` when the status already says what it should: nothing is written
when nothing changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from l7.k8s.policies import FieldError

MAX_MESSAGE = 4000  # condition messages stay readable (and the object small)
MAX_FAILURES = 10  # failing nodes listed with their errors (the count has them all)
MAX_FAILURE_MESSAGE = 500

State = Literal["enforcing", "failing"]


@dataclass(frozen=True)
class NodeEnforcement:
    """One node's view: ``enforced`` is None while the agent has nothing (new) to say."""

    enforced: bool | None
    message: str = ""


@dataclass(frozen=True)
class Counted:
    """What this node counted itself as in an object's status, for one generation."""

    generation: int
    state: State


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _condition(
    previous: Sequence[Mapping[str, Any]], kind: str, verdict: tuple[bool, str, str], gen: int, now: str
) -> dict[str, Any]:
    status, reason, message = verdict
    text = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == text else None
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": _clip(message),
        "observedGeneration": gen,
        "lastTransitionTime": since or now,
    }


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _enforced_verdict(
    enforcing: int, failing: int, failures: Sequence[Mapping[str, Any]], gen: int
) -> tuple[bool, str, str]:
    summary = f"{enforcing} {'node enforces' if enforcing == 1 else 'nodes enforce'} generation {gen}"
    if failing:
        listed = "; ".join(f"{f['node']}: {f['message']}" for f in failures)
        more = f" (and {failing - len(failures)} more)" if failing > len(failures) else ""
        return False, "Failed", f"{summary}, {failing} failing{more}: {listed}"
    if enforcing:
        return True, "Enforced", summary
    return False, "Pending", f"{summary}: waiting for the node agents"


def desired_status(
    current: Mapping[str, Any] | None,
    node: str,
    *,
    generation: int,
    errors: Sequence[FieldError],
    view: NodeEnforcement,
    counted: Counted | None,
    known_nodes: Collection[str] | None,
    now: str,
) -> tuple[dict[str, Any], Counted | None]:
    """The whole status this node wants, and what it will then have counted itself as."""
    current = current or {}
    same = current.get("observedGeneration") == generation
    enforcing = _int(current.get("enforcingNodes")) if same else 0
    failing = _int(current.get("failingNodes")) if same else 0
    failures = [
        dict(f) for f in (current.get("failures") or []) if same and isinstance(f, Mapping) and f.get("node")
    ]
    before: State | None = counted.state if counted and same and counted.generation == generation else None
    if (before == "enforcing" and not enforcing) or (before == "failing" and not failing):
        before = None  # the counts were reset under us (status cleared): count again
    if errors:
        now_state: State | None = None
        enforcing, failing, failures, before = 0, 0, [], None
    elif known_nodes is not None and node not in known_nodes:
        now_state = None  # a node that has left the cluster (its agent not stopped yet) counts no more
    elif view.enforced is None:
        now_state = before
    else:
        now_state = "enforcing" if view.enforced else "failing"
    if before != now_state:
        enforcing -= before == "enforcing"
        failing -= before == "failing"
        enforcing += now_state == "enforcing"
        failing += now_state == "failing"
    mine = next((f for f in failures if f["node"] == node), None)
    failures = [f for f in failures if f["node"] != node]
    if known_nodes is not None:
        gone = [f for f in failures if f["node"] not in known_nodes]
        failing -= len(gone)
        failures = [f for f in failures if f["node"] in known_nodes]
    if now_state == "failing" and len(failures) < MAX_FAILURES:
        message = _clip(view.message, MAX_FAILURE_MESSAGE) if view.enforced is False else None
        failures.append({"node": node, "message": message or (mine or {}).get("message") or "failed"})
    failures.sort(key=lambda f: str(f["node"]))
    enforcing, failing = max(enforcing, 0), max(failing, len(failures))
    if known_nodes is not None:  # a count never exceeds the cluster (a write whose answer was lost)
        failing = min(failing, len(known_nodes))
        enforcing = min(enforcing, len(known_nodes) - failing)
    previous: Sequence[Mapping[str, Any]] = current.get("conditions") or []
    valid_message = "; ".join(str(e) for e in errors) if errors else "the policy is valid"
    enforced = (
        (False, "Invalid", "not enforced: the policy is invalid")
        if errors
        else _enforced_verdict(enforcing, failing, failures, generation)
    )
    status = {
        "observedGeneration": generation,
        "enforcingNodes": enforcing,
        "failingNodes": failing,
        "failures": failures,
        "conditions": [
            _condition(
                previous,
                "Valid",
                (not errors, "Invalid" if errors else "Valid", valid_message),
                generation,
                now,
            ),
            _condition(previous, "Enforced", enforced, generation, now),
        ],
        "errors": [{"path": e.path, "message": e.message} for e in errors],
    }
    return status, (Counted(generation, now_state) if now_state else None)


def status_patch(obj: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch for the status subresource, or None when the status says ``desired`` already.
    A per-node ``nodes`` map written by an older l7gate is removed."""
    current = obj.get("status") or {}
    if all(current.get(k) == v for k, v in desired.items()) and "nodes" not in current:
        return None
    meta = obj.get("metadata") or {}
    status = dict(desired)
    if "nodes" in current:
        status["nodes"] = None
    patch: dict[str, Any] = {"status": status}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    return patch
