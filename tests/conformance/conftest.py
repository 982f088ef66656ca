"""Conformance: checks against reference material outside the repository (the seed posts, Cilium's CRDs).

``make test`` never collects this directory (``norecursedirs`` in pyproject.toml), so a fresh clone with
nothing beside it tests green. ``make conformance`` runs it with the reference directory in
``L7GATE_REFERENCE`` (``make conformance REFERENCE=DIR``; default: ``shared`` beside the repository).
When that directory is missing the run fails with one line naming it (pytest exit code 4); it never skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENV = "L7GATE_REFERENCE"


def reference_dir() -> Path:
    return Path(os.environ.get(ENV) or REPO.parent / "shared").absolute()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """No test runs when a conformance test is selected and the reference directory is missing."""
    if not any(HERE in item.path.resolve().parents for item in items):
        return
    reference = reference_dir()
    if not reference.is_dir():
        raise pytest.UsageError(
            f"conformance: reference directory {reference} not found"
            f" (give it with make conformance REFERENCE=DIR or {ENV}=DIR)"
        )


@pytest.fixture(scope="session")
def reference() -> Path:
    """The reference directory: ``seeds/`` (the source posts), ``reference/cilium-crds/`` (Cilium's CRDs)."""
    return reference_dir()
