"""The in-process API server the controller tests talk to: real wire protocol, CRD schemas enforced."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakeapi import FakeAPIServer
from kube_helpers import crd_validators


@pytest.fixture
def server() -> Iterator[FakeAPIServer]:
    srv = FakeAPIServer(bookmark_interval=0.2, watch_cap=3, validators=crd_validators()).start()
    try:
        yield srv
    finally:
        srv.close()
