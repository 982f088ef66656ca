"""Test-wide rules: tests marked ``root`` need root and the kernel; without them they fail, never skip."""

from __future__ import annotations

import os

import pytest


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, tc, BPF); CI runs as root", pytrace=False)
