"""Cilium's own CRD schema as the oracle for the seeds: every Cilium policy in deploy/examples/ validates
against the storage version of Cilium's CRD (the reference directory's ``reference/cilium-crds/``).

Together with ``tests/kube/test_kube_manifests.py`` (every example policy, converted to our kinds,
validates against our generated CRD schema), this says: what Cilium's schema accepts of the seeds, ours
accepts too."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from l7.k8s import crd

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"
CILIUM_CRD = {
    "CiliumNetworkPolicy": "ciliumnetworkpolicies",
    "CiliumClusterwideNetworkPolicy": "ciliumclusterwidenetworkpolicies",
}


def cilium_documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc and doc.get("kind") in CILIUM_CRD:
                out.append((f"{path.relative_to(EXAMPLES)}[{i}]", doc))
    return out


DOCUMENTS = cilium_documents()


@functools.cache
def _cilium_validator(reference: Path, kind: str) -> jsonschema.Draft7Validator:
    path = reference / "reference" / "cilium-crds" / f"{CILIUM_CRD[kind]}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    (version,) = [v for v in data["spec"]["versions"] if v.get("storage")]
    return jsonschema.Draft7Validator(crd.json_schema(version["schema"]["openAPIV3Schema"]))


def test_the_seeds_are_there() -> None:
    assert len(DOCUMENTS) >= 20


@pytest.mark.parametrize(("where", "doc"), DOCUMENTS, ids=[where for where, _ in DOCUMENTS])
def test_ciliums_schema_accepts_the_example(where: str, doc: dict[str, Any], reference: Path) -> None:
    validator = _cilium_validator(reference, doc["kind"])
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == [], where
