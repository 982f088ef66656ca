"""The static checks run as part of the tests: ruff, mypy (strict) and import-linter (DESIGN.md layering)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)


def test_ruff() -> None:
    _run(str(BIN / "ruff"), "check", ".")


def test_mypy() -> None:
    _run(str(BIN / "mypy"))


def test_import_layering() -> None:
    _run(str(BIN / "lint-imports"))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _importers(top: str) -> list[str]:
    return sorted(
        str(path.relative_to(REPO))
        for package in ("l7", "xds/l7xds", "dnsproxy", "bpf")
        for path in (REPO / package).rglob("*.py")
        if any(name == top or name.startswith(top + ".") for name in _imports(path))
    )


@pytest.mark.parametrize(("top", "allowed"), [("bcc", "bpf/loader.py"), ("kubernetes", "l7/kube.py")])
def test_one_module_imports(top: str, allowed: str) -> None:
    """DESIGN.md: only one module imports bcc, only one imports the Kubernetes client."""
    assert set(_importers(top)) <= {allowed}


def test_policy_model_imports_nothing_else_of_the_project() -> None:
    for path in (REPO / "l7" / "policy").rglob("*.py"):
        own = {n for n in _imports(path) if n.split(".")[0] in {"l7", "l7xds", "dnsproxy", "bpf"}}
        assert all(n.startswith("l7.policy") or n == "l7.errors" for n in own), (path, own)


def test_our_xds_package_and_the_protos_resolve_from_anywhere() -> None:
    """Our xDS package has its own import name (``l7xds``, in the ``xds/`` folder); the ``xds-protos`` wheel
    keeps ``xds``. Both import from any working directory, with no path hack in the environment."""
    code = "import l7xds.server, xds.core.v3, l7xds; print(l7xds.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(REPO / "xds" / "l7xds" / "__init__.py")
    site = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert not list(Path(site).glob("l7gate-repo-first.pth"))
