"""One exception root per package (STYLE.md): every exception class defined in a package derives from it.

``l7xds`` and ``dnsproxy`` have their own roots under :class:`l7.errors.L7GateError`; ``bpf`` imports nothing
of ``l7``, so :class:`bpf.errors.DatapathError` is a root of its own.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from bpf.errors import DatapathError
from dnsproxy.errors import DNSProxyError
from l7.errors import L7GateError
from l7xds.errors import XdsError

REPO = Path(__file__).resolve().parents[2]
ROOTS: dict[str, type[Exception]] = {
    "l7": L7GateError,
    "l7xds": XdsError,
    "dnsproxy": DNSProxyError,
    "bpf": DatapathError,
}


def _exceptions(top: str) -> list[type[BaseException]]:
    """The exception classes defined in the repository's modules of package ``top``."""
    package = importlib.import_module(top)
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(package.__path__, f"{top}."):
        if not Path(getattr(info.module_finder, "path", "")).resolve().is_relative_to(REPO):
            continue  # only this repository's modules count
        module = importlib.import_module(info.name)
        found += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException)
        ]
    return found


@pytest.mark.parametrize("top", sorted(ROOTS))
def test_every_exception_derives_from_its_package_root(top: str) -> None:
    found = _exceptions(top)
    assert found, f"no exception classes found in {top}"
    strays = [f"{cls.__module__}.{cls.__qualname__}" for cls in found if not issubclass(cls, ROOTS[top])]
    assert strays == [], f"not under {ROOTS[top].__qualname__}"
