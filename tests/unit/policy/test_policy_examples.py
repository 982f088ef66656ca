"""Docs that run: every example and seed policy validates, and the seeds match the blog posts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from l7.policy.documents import load_paths
from l7.policy.model import EndpointSelector, K8sServiceNamespace, K8sServiceSelectorNamespace

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "deploy" / "examples"
SEEDS = EXAMPLES / "seeds"
SEED_TEXTS = ROOT.parent / "shared" / "seeds"
SOURCE = re.compile(r"# Source: \.\./shared/seeds/(?P<file>\S+) line (?P<line>\d+); (?P<note>.+)")

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


def _strip(line: str) -> str:
    return line.strip()


@pytest.mark.parametrize("path", sorted(SEEDS.glob("*.yaml")), ids=lambda p: p.name)
def test_seed_file_matches_its_source(path: Path) -> None:
    """Same lines as the post (indentation aside), except the changes the header comment declares."""
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    match = SOURCE.fullmatch(header)
    assert match, header
    source = (SEED_TEXTS / match["file"]).read_text(encoding="utf-8").splitlines()
    start = int(match["line"]) - 1
    assert source[start].startswith("apiVersion:")
    if "Helm template rendered" in match["note"]:
        return
    exact = match["note"].startswith("verbatim")
    expected = source[start : start + len(lines) + 2]
    if "namespace:" in match["note"]:
        lines = [line for line in lines if not line.startswith("  namespace: ")]
    if "suffixed -2" in match["note"]:
        lines = [line.replace("-2", "") if line.startswith("  name:") else line for line in lines]
    expected = expected[: len(lines)]
    if exact:
        assert lines == expected
    else:
        assert [_strip(line) for line in lines] == [_strip(line) for line in expected]


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
