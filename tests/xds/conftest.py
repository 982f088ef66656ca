"""Shared helpers for the xDS tests.

The import name ``xds`` is shared with the xds-protos wheel: make sure this repository's package is the
one imported (it extends its ``__path__`` with the wheel's folder, see xds/__init__.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if sys.path[:1] != [str(REPO)]:
    sys.path.insert(0, str(REPO))
_found = sys.modules.get("xds")
if _found is not None and not str(getattr(_found, "__file__", "")).startswith(str(REPO)):
    del sys.modules["xds"]

import pytest  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
