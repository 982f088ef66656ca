"""Status of a policy object, as pure functions: what one node's controller wants it to say.

::

    status:
      observedGeneration: 3
      enforcingNodes: 2                # nodes whose entry enforces generation 3 (a printer column)
      conditions:
      - {type: Valid, status: "False", reason: Invalid, message: "spec.egress[0].toCIDR[0]: ...; ..."}
      - {type: Enforced, status: "True", reason: Enforced, message: "2/2 nodes enforce generation 3"}
      errors: [{path: spec.egress[0].toCIDR[0], message: "..."}]      # every validation error
      nodes: {k8s-w1: {enforced: true, observedGeneration: 3, message: "", lastUpdated: ...}}

Every node's controller writes its own ``nodes`` entry (a JSON merge patch merges maps key by key) and
the summary (conditions, ``enforcingNodes``) computed from the entries it has seen; the patch carries
the object's ``resourceVersion`` so a concurrent writer makes it fail (409) instead of overwriting a newer
view, and the next watch event brings the fresh status. :func:`status_patch` returns ``None`` when the
status already says what it should: nothing is written when nothing changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from l7.k8s.policies import FieldError

MAX_MESSAGE = 4000  # condition messages stay readable (and the object small)


@dataclass(frozen=True)
class NodeEnforcement:
    """One node's view: ``enforced`` is None while the agent has not reported yet."""

    enforced: bool | None
    message: str = ""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


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


def _node_entry(old: Mapping[str, Any] | None, gen: int, view: NodeEnforcement, now: str) -> dict[str, Any]:
    entry = {"enforced": bool(view.enforced), "observedGeneration": gen, "message": _clip(view.message)}
    if old and all(old.get(k) == v for k, v in entry.items()) and old.get("lastUpdated"):
        entry["lastUpdated"] = old["lastUpdated"]
    else:
        entry["lastUpdated"] = now
    return entry


def desired_status(
    current: Mapping[str, Any] | None,
    node: str,
    *,
    generation: int,
    errors: Sequence[FieldError],
    view: NodeEnforcement,
    known_nodes: Collection[str] | None,
    now: str,
) -> dict[str, Any]:
    """The whole status this node wants (``nodes`` entries of vanished nodes map to ``None``)."""
    current = current or {}
    old_nodes: Mapping[str, Any] = current.get("nodes") or {}
    nodes: dict[str, Any] = {k: v for k, v in old_nodes.items() if isinstance(v, Mapping)}
    if known_nodes is not None:
        for name in list(nodes):
            if name not in known_nodes and name != node:
                nodes[name] = None
    if view.enforced is not None or errors:
        nodes[node] = _node_entry(old_nodes.get(node), generation, view, now)
    live = {k: v for k, v in nodes.items() if v is not None}
    enforcing = sorted(
        k for k, v in live.items() if v.get("enforced") and v.get("observedGeneration") == generation
    )
    before: Sequence[Mapping[str, Any]] = current.get("conditions") or []
    summary = f"{len(enforcing)}/{len(live)} nodes enforce generation {generation}"
    if errors:
        verdict = (False, "Invalid", "not enforced: the policy is invalid")
    elif live and len(enforcing) == len(live):
        verdict = (True, "Enforced", summary)
    else:
        waiting = [
            f"{k}: {v.get('message') or 'pending'}" for k, v in sorted(live.items()) if k not in enforcing
        ]
        failed = any(not v.get("enforced") and v.get("message") for v in live.values())
        verdict = (False, "Failed" if failed else "Pending", "; ".join([summary, *waiting]))
    valid_message = "; ".join(str(e) for e in errors) if errors else "the policy is valid"
    conditions = [
        _condition(
            before, "Valid", (not errors, "Invalid" if errors else "Valid", valid_message), generation, now
        ),
        _condition(before, "Enforced", verdict, generation, now),
    ]
    return {
        "observedGeneration": generation,
        "enforcingNodes": len(enforcing),
        "conditions": conditions,
        "errors": [{"path": e.path, "message": e.message} for e in errors],
        "nodes": nodes,
    }


def _same(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    for key, value in desired.items():
        if key == "nodes":
            have = current.get("nodes") or {}
            for name, entry in value.items():
                if entry is None:
                    if name in have:
                        return False
                elif have.get(name) != entry:
                    return False
        elif current.get(key) != value:
            return False
    return True


def status_patch(obj: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch for the status subresource, or None when the status says ``desired`` already."""
    current = obj.get("status") or {}
    if _same(current, desired):
        return None
    meta = obj.get("metadata") or {}
    patch: dict[str, Any] = {"status": dict(desired)}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    return patch
