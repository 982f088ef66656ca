"""`make test` needs nothing beside the repository: only tests/conformance/ (run by `make conformance`,
never collected by `make test`) reads the reference material in ../shared or L7GATE_REFERENCE."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CONFORMANCE = TESTS / "conformance"
# The reference directory by its default relative path, as a quoted path component (``parent / "shared"``),
# or by the variable that names it.
REFERENCE = re.compile(r"\.\.[/\\]shared\b|[\"']shared[/\\\"']|L7GATE_REFERENCE")


def _sources() -> list[Path]:
    return sorted(
        path
        for path in TESTS.rglob("*")
        if path.is_file()
        and path != Path(__file__).resolve()
        and CONFORMANCE not in path.parents
        and "__pycache__" not in path.parts
    )


def test_only_conformance_tests_read_the_reference_material() -> None:
    sources = _sources()
    assert len(sources) > 50
    found = [
        f"{path.relative_to(TESTS.parent)}:{n}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if REFERENCE.search(line)
    ]
    assert found == [], "move these to tests/conformance/ (make conformance)"


def test_make_test_does_not_collect_conformance(pytestconfig: pytest.Config) -> None:
    assert "tests/conformance" in pytestconfig.getini("norecursedirs")
    assert list(CONFORMANCE.glob("test_*.py"))
