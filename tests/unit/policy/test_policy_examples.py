"""Docs that run: every example and seed policy validates, and every seed declares its source.

That the seeds match the posts they declare is checked against the posts themselves by
``make conformance`` (``tests/conformance/``): the posts are not part of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from l7.policy.documents import load_paths
from l7.policy.model import EndpointSelector, K8sServiceNamespace, K8sServiceSelectorNamespace

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "deploy" / "examples"
SEEDS = EXAMPLES / "seeds"
SOURCE = re.compile(r"# Source: (?P<file>\S+\.txt) line (?P<line>[1-9]\d*); (?P<note>.+)")

EXAMPLE_FILES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_there_are_examples_and_seeds() -> None:
    assert len(list(SEEDS.glob("*.yaml"))) >= 20
    assert len(EXAMPLE_FILES) > len(list(SEEDS.glob("*.yaml")))


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_validates(path: Path) -> None:
    result = load_paths([path])
    assert [str(e) for e in result.errors] == []
    assert result.policies


def test_all_examples_load_as_one_set() -> None:
    result = load_paths([EXAMPLES])
    assert result.errors == ()
    assert len(result.policies) >= len(EXAMPLE_FILES)


@pytest.mark.parametrize("path", sorted(SEEDS.glob("*.yaml")), ids=lambda p: p.name)
def test_seed_file_declares_its_source(path: Path) -> None:
    """The first line names the post, the line of its ``apiVersion`` and what was changed; the seeds'
    README lists the same."""
    header = path.read_text(encoding="utf-8").splitlines()[0]
    match = SOURCE.fullmatch(header)
    assert match, header
    readme = (SEEDS / "README.md").read_text(encoding="utf-8")
    assert f"| `{path.name}` | `{Path(match['file']).name}` line {match['line']} |" in readme


def test_service_and_node_seeds_parse_into_the_model() -> None:
    """The two seeds once rejected as unsupported: toServices (by name and by selector) and fromNodes."""
    (service,) = load_paths([SEEDS / "002-service-rule.yaml"]).policies
    (egress,) = service.rules[0].egress or ()
    by_name, by_labels = egress.to_services or ()
    assert by_name.k8s_service == K8sServiceNamespace(service_name="myservice", namespace="default")
    assert by_name.k8s_service_selector is None
    assert by_labels.k8s_service_selector == K8sServiceSelectorNamespace(
        selector=EndpointSelector(match_labels={"env": "staging"}), namespace="another-namespace"
    )
    (nodes,) = load_paths([SEEDS / "002-to-prod-from-control-plane-nodes.yaml"]).policies
    (ingress,) = nodes.rules[0].ingress or ()
    assert ingress.from_nodes == (
        EndpointSelector(match_labels={"node-role.kubernetes.io/control-plane": ""}),
    )
