"""EndpointsLoader and TopologyBuilder: the same results as the full parse and build, reusing what did not
change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l7.endpoints import EndpointsError, EndpointsLoader, TopologyBuilder, build_topology, parse_endpoints
from l7.identity import IdentityAllocator


def _file(web_app: str = "web", ns_team: str = "a") -> dict[str, object]:
    return {
        "endpoints": [
            {"name": "web", "namespace": "a", "labels": {"app": web_app}, "ips": ["10.0.0.1"], "node": "w1"},
            {
                "name": "db",
                "namespace": "b",
                "labels": {"app": "db"},
                "ips": ["10.0.0.2"],
                "ports": {"sql": 5432},
            },
        ],
        "namespaces": {"a": {"labels": {"team": ns_team}}},
        "nodes": [{"name": "w1", "ips": ["192.168.0.1"], "labels": {"zone": "z"}}],
        "services": [{"name": "s", "namespace": "b", "selector": {"app": "db"}}],
    }


def test_same_as_build_topology_and_reuses_unchanged_endpoints() -> None:
    allocator = IdentityAllocator()
    builder = TopologyBuilder(allocator)
    first = builder.build(parse_endpoints(_file()))
    assert first == build_topology(parse_endpoints(_file()), allocator)
    relabelled = builder.build(parse_endpoints(_file(web_app="api")))
    assert relabelled == build_topology(parse_endpoints(_file(web_app="api")), allocator)
    assert relabelled.endpoints[1] is first.endpoints[1]  # db did not change: the same object
    assert relabelled.endpoints[0] is not first.endpoints[0]
    assert relabelled.endpoints[0].identity != first.endpoints[0].identity


def test_namespace_labels_change_every_endpoint_of_the_file() -> None:
    allocator = IdentityAllocator()
    builder = TopologyBuilder(allocator)
    first = builder.build(parse_endpoints(_file()))
    again = builder.build(parse_endpoints(_file(ns_team="x")))
    assert again == build_topology(parse_endpoints(_file(ns_team="x")), allocator)
    assert again.endpoints[0].labels != first.endpoints[0].labels


def test_loader_revalidates_only_changed_entries_and_reports_errors_like_the_full_parse(
    tmp_path: Path,
) -> None:
    path = tmp_path / "endpoints.json"
    loader = EndpointsLoader()
    path.write_text(json.dumps(_file()))
    first = loader.load(path)
    assert first == parse_endpoints(_file())
    path.write_text(json.dumps(_file(web_app="api")))
    second = loader.load(path)
    assert second == parse_endpoints(_file(web_app="api"))
    assert second.endpoints[1] is first.endpoints[1]  # db's entry did not change: not validated again
    broken = _file()
    broken["endpoints"][1]["ips"] = ["10.0.0.1"]  # type: ignore[index]  # web's IP used twice
    path.write_text(json.dumps(broken))
    with pytest.raises(EndpointsError) as caught:
        loader.load(path)
    with pytest.raises(EndpointsError) as full:
        parse_endpoints(broken, str(path))
    assert caught.value.problems == full.value.problems
    bad_ip = _file()
    bad_ip["endpoints"][0]["ips"] = ["10.0.0.300"]  # type: ignore[index]
    path.write_text(json.dumps(bad_ip))
    with pytest.raises(EndpointsError) as caught:
        loader.load(path)
    assert caught.value.problems[0][0] == "endpoints[0].ips"  # the path the full parse reports
