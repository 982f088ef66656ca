"""Shared helpers of the resolution tests: seed policies, inline policies, example endpoints."""

from __future__ import annotations

from pathlib import Path

from l7.endpoints import EndpointsFile, load_endpoints, parse_endpoints
from l7.policy.documents import Policy, load_paths, load_text

REPO = Path(__file__).resolve().parents[3]
SEEDS = REPO / "deploy" / "examples" / "seeds"
ENDPOINTS = REPO / "deploy" / "endpoints"


def seeds(*names: str) -> tuple[Policy, ...]:
    result = load_paths([SEEDS / f"{name}.yaml" for name in names])
    assert not result.errors, result.errors
    return result.policies


def policies(text: str) -> tuple[Policy, ...]:
    result = load_text(text)
    assert not result.errors, [str(e) for e in result.errors]
    return result.policies


def seed_002() -> EndpointsFile:
    return load_endpoints(ENDPOINTS / "seed-002.yaml")


def seed_000() -> EndpointsFile:
    return load_endpoints(ENDPOINTS / "seed-000-001-003.yaml")


def endpoints(data: dict[str, object]) -> EndpointsFile:
    return parse_endpoints(data)
