"""The aggregated policy status (:mod:`l7.k8s.status`), as pure functions: counts and a bounded list of
failing nodes, each node moving only its own contribution, the same size for 3 nodes or 500."""

from __future__ import annotations

import json
import random
from typing import Any

from l7.k8s.policies import FieldError
from l7.k8s.status import MAX_FAILURES, Counted, NodeEnforcement, desired_status, status_patch

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def obj_with(status: dict[str, Any] | None, rv: str = "7") -> dict[str, Any]:
    out: dict[str, Any] = {"metadata": {"name": "p", "namespace": "a", "resourceVersion": rv}}
    if status is not None:
        out["status"] = status
    return out


def step(
    current: dict[str, Any] | None,
    node: str,
    enforced: bool | None,
    counted: Counted | None,
    *,
    generation: int = 1,
    message: str = "",
    known: set[str] | None = None,
    now: str = T0,
) -> tuple[dict[str, Any], Counted | None]:
    return desired_status(
        current,
        node,
        generation=generation,
        errors=(),
        view=NodeEnforcement(enforced, message),
        counted=counted,
        known_nodes=known,
        now=now,
    )


def test_status_written_once_then_unchanged() -> None:
    desired, mine = step(None, "n1", True, None, known={"n1"})
    assert mine == Counted(1, "enforcing")
    patch = status_patch(obj_with(None), desired)
    assert patch is not None and patch["metadata"] == {"resourceVersion": "7"}
    assert (desired["enforcingNodes"], desired["failingNodes"], desired["failures"]) == (1, 0, [])
    assert [(c["type"], c["status"]) for c in desired["conditions"]] == [
        ("Valid", "True"),
        ("Enforced", "True"),
    ]
    # the same facts a minute later, counted already: times kept, the count not doubled, nothing to write
    again, mine_again = step(desired, "n1", True, mine, known={"n1"}, now=T1)
    assert again == desired and mine_again == mine
    assert status_patch(obj_with(desired, "8"), again) is None


def test_invalid_lists_every_error_with_its_path_and_counts_nothing() -> None:
    errors = (FieldError("spec.egress[0].toCIDR[0]", "bad prefix"), FieldError("spec.ingress", "bad"))
    desired, mine = desired_status(
        None,
        "n1",
        generation=3,
        errors=errors,
        view=NodeEnforcement(None),
        counted=None,
        known_nodes=None,
        now=T0,
    )
    valid, enforced = desired["conditions"]
    assert valid["status"] == "False" and valid["reason"] == "Invalid"
    assert valid["message"] == "spec.egress[0].toCIDR[0]: bad prefix; spec.ingress: bad"
    assert enforced["status"] == "False" and enforced["reason"] == "Invalid"
    assert desired["errors"] == [
        {"path": "spec.egress[0].toCIDR[0]", "message": "bad prefix"},
        {"path": "spec.ingress", "message": "bad"},
    ]
    assert (desired["enforcingNodes"], desired["failingNodes"], mine) == (0, 0, None)


def test_a_failing_node_is_listed_with_its_error_and_moves_its_own_count() -> None:
    known = {"n1", "n2"}
    one, c1 = step(None, "n1", True, None, known=known)
    both, c2 = step(one, "n2", False, None, message="agent: boom", known=known, now=T1)
    assert (both["enforcingNodes"], both["failingNodes"]) == (1, 1)
    assert both["failures"] == [{"node": "n2", "message": "agent: boom"}]
    enforced = both["conditions"][1]
    assert enforced["status"] == "False" and enforced["reason"] == "Failed"
    assert enforced["message"] == "1 node enforces generation 1, 1 failing: n2: agent: boom"
    assert enforced["lastTransitionTime"] == T1  # True → False
    assert both["conditions"][0]["lastTransitionTime"] == T0  # Valid stayed True
    # n2 recovers: its failure goes, it counts as enforcing instead
    fixed, c2 = step(both, "n2", True, c2, known=known, now=T1)
    assert (fixed["enforcingNodes"], fixed["failingNodes"], fixed["failures"]) == (2, 0, [])
    assert fixed["conditions"][1]["status"] == "True" and c2 == Counted(1, "enforcing")
    # n2 fails again, then leaves the cluster: n1 takes it off the list and the count
    again, c2 = step(fixed, "n2", False, c2, message="agent: boom", known=known)
    assert (again["enforcingNodes"], again["failingNodes"]) == (1, 1)
    after, _ = step(again, "n1", True, c1, known={"n1"})
    assert (after["enforcingNodes"], after["failingNodes"], after["failures"]) == (1, 0, [])
    assert after["conditions"][1]["status"] == "True"
    # and n2 itself, still running a moment longer, counts no more
    gone, c2 = step(after, "n2", False, c2, message="agent: boom", known={"n1"})
    assert (gone["enforcingNodes"], gone["failingNodes"], gone["failures"], c2) == (1, 0, [], None)


def test_a_new_generation_counts_from_zero() -> None:
    old, counted = step(None, "n1", True, None)
    pending, mine = step(old, "n1", None, counted, generation=2, now=T1)
    assert (pending["enforcingNodes"], pending["observedGeneration"], mine) == (0, 2, None)
    assert pending["conditions"][1]["reason"] == "Pending"
    enforced, mine = step(pending, "n1", True, mine, generation=2, now=T1)
    assert enforced["enforcingNodes"] == 1 and mine == Counted(2, "enforcing")


def test_a_cleared_status_is_counted_again() -> None:
    """A node that remembers counting itself, on a status someone reset: it counts itself again."""
    _, counted = step(None, "n1", True, None)
    desired, _ = step({"observedGeneration": 1, "enforcingNodes": 0}, "n1", True, counted)
    assert desired["enforcingNodes"] == 1


def test_many_nodes_exact_counts_and_a_bounded_status() -> None:
    """500 nodes, in random order and with repeats (each with its own memory), 30 of them failing: the
    counts are exact, at most MAX_FAILURES are listed, and the status is as small as for 3 nodes."""
    rng = random.Random(7)
    nodes = [f"node-{i:03d}" for i in range(500)]
    failing = set(rng.sample(nodes, 30))
    known = set(nodes)
    status: dict[str, Any] | None = None
    memory: dict[str, Counted | None] = {}
    order = nodes + rng.sample(nodes, 200)  # a node may look again: nothing is counted twice
    rng.shuffle(order)
    for node in order:
        ok = node not in failing
        status, memory[node] = step(status, node, ok, memory.get(node), message=f"{node}: no", known=known)
    assert status is not None
    assert (status["enforcingNodes"], status["failingNodes"]) == (470, 30)
    assert len(status["failures"]) == MAX_FAILURES
    assert all(f["node"] in failing for f in status["failures"])
    assert len(json.dumps(status)) < 4000
    assert "(and 20 more)" in status["conditions"][1]["message"]
    # the failing nodes recover (their places on the list go to the others still failing)
    for node in sorted(failing):
        status, memory[node] = step(status, node, True, memory[node], known=known)
    assert (status["enforcingNodes"], status["failingNodes"], status["failures"]) == (500, 0, [])


def test_counts_never_exceed_the_cluster() -> None:
    """A node whose write went through but whose answer was lost counts itself again: bounded."""
    status, _ = step(None, "n1", True, None, known={"n1", "n2"})
    status, _ = step(status, "n2", True, None, known={"n1", "n2"})
    again, _ = step(status, "n1", True, None, known={"n1", "n2"})
    assert again["enforcingNodes"] == 2


def test_an_older_per_node_map_is_removed() -> None:
    desired, _ = step(None, "n1", True, None)
    legacy = {**desired, "nodes": {"n1": {"enforced": True}}}
    patch = status_patch(obj_with(legacy), desired)
    assert patch is not None and patch["status"]["nodes"] is None
