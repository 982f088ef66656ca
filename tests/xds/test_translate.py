"""Translation is pure: rules in, Envoy messages out (checked structurally, no Envoy needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import re2
import yaml

from l7.policy.model import HeaderMatch, HTTPRule, Mismatch, Secret
from l7xds import resources as rt
from l7xds.bootstrap import EXAMPLE, bootstrap, render
from l7xds.errors import TranslationError
from l7xds.translate import (
    AMBIGUOUS_PATH,
    AMBIGUOUS_PATH_ROUTE,
    AUDIT_ROUTE,
    DENY_BODY,
    FAULT_FILTER,
    ProxySettings,
    Translator,
    build_cluster,
    build_listener,
    build_route_configuration,
    host_regex,
    snapshot_of,
)

REPO = Path(__file__).resolve().parents[2]


def routes(rules: tuple[HTTPRule, ...], settings: ProxySettings | None = None) -> list[Any]:
    """The routes without the ambiguous-path deny (always second, checked here)."""
    config = build_route_configuration("r", rules, settings or ProxySettings())
    (virtual_host,) = config.virtual_hosts
    assert list(virtual_host.domains) == ["*"]
    all_routes = list(virtual_host.routes)
    ambiguous = all_routes.pop(1)
    assert ambiguous.name == AMBIGUOUS_PATH_ROUTE and ambiguous.match.safe_regex.regex == AMBIGUOUS_PATH
    assert ambiguous.direct_response.status == 403
    return all_routes


def matchers(route: Any) -> dict[str, Any]:
    return {h.name: h for h in route.match.headers}


def assert_deny_tail(all_routes: list[Any]) -> None:
    first, last = all_routes[0], all_routes[-1]
    assert first.match.HasField("connect_matcher") and first.direct_response.status == 403
    assert last.match.WhichOneof("path_specifier") == "prefix" and last.match.prefix == ""
    assert not last.match.headers
    assert last.direct_response.status == 403 and last.direct_response.body.inline_string == DENY_BODY
    assert DENY_BODY == "Access denied\r\n"
    for deny in (first, last):  # answered in a later event (pipelined requests after a deny, issue 11)
        assert FAULT_FILTER in deny.typed_per_filter_config


def test_seed_002_get_public() -> None:
    all_routes = routes((HTTPRule(method="GET", path="/public"),))
    assert_deny_tail(all_routes)
    (allow,) = all_routes[1:-1]
    m = matchers(allow)
    assert m[":method"].string_match.safe_regex.regex == "GET"
    assert m[":path"].string_match.safe_regex.regex == "/public"  # whole :path, query string included
    assert allow.route.cluster == "l7gate-original-dst"
    assert allow.route.timeout.seconds == 0 and allow.route.HasField("timeout")


def test_l7_rule_example_with_header() -> None:
    rules = (
        HTTPRule(method="GET", path="/path1$"),
        HTTPRule(method="PUT", path="/path2$", headers=("X-My-Header: true",)),
    )
    get, put = routes(rules)[1:-1]
    assert set(matchers(get)) == {":method", ":path"}
    header = matchers(put)["x-my-header"]
    assert header.string_match.exact == "true" and not header.invert_match
    presence = matchers(routes((HTTPRule(headers=("X-Key",)),))[1])["x-key"]
    assert presence.present_match


def test_empty_rule_set_allows_everything_but_connect() -> None:
    all_routes = routes(())
    assert_deny_tail(all_routes)
    (allow,) = all_routes[1:-1]
    assert allow.match.prefix == "" and not allow.match.headers and allow.route.cluster


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com:8080", True),
        ("example.com", "example.com.", True),
        ("example.com", "example.com.:80", True),
        ("example.com", "www.example.com", False),
        ("^example\\.com$", "example.com.:443", True),
        (".*\\.example\\.com", "a.example.com", True),
        ("example.com", "example.com:http", False),
    ],
)
def test_host_regex(pattern: str, value: str, matches: bool) -> None:
    assert (re2.fullmatch(host_regex(pattern), value) is not None) is matches


def test_header_matches_and_mismatch_actions() -> None:
    secrets = {("team", "token"): "s3cret"}
    settings = ProxySettings(secrets=secrets)
    exact = routes((HTTPRule(header_matches=(HeaderMatch(name="X-A", value="1"),)),), settings)[1]
    assert matchers(exact)["x-a"].string_match.exact == "1"
    secret = HeaderMatch(name="X-Token", secret=Secret(namespace="team", name="token"))
    assert matchers(routes((HTTPRule(header_matches=(secret,)),), settings)[1])[
        "x-token"
    ].string_match.exact == ("s3cret")
    # A secret the caller could not resolve: the rule cannot match (only the deny routes remain).
    missing = HeaderMatch(name="X-Token", secret=Secret(name="absent"))
    assert len(routes((HTTPRule(header_matches=(missing,)),), settings)) == 2
    # No namespace means "default"
    defaulted = ProxySettings(secrets={("default", "absent"): "v"})
    assert (
        matchers(routes((HTTPRule(header_matches=(missing,)),), defaulted)[1])["x-token"].string_match.exact
        == "v"
    )

    def action(mismatch: Mismatch) -> list[Any]:
        rule = HTTPRule(path="/p", header_matches=(HeaderMatch(name="X-A", value="1", mismatch=mismatch),))
        return routes((rule,), settings)[1:-1]

    (log,) = action(Mismatch.LOG)
    assert "x-a" not in matchers(log) and not log.request_headers_to_add
    (replace,) = action(Mismatch.REPLACE)
    assert "x-a" not in matchers(replace)
    assert replace.request_headers_to_add[0].header.key == "X-A"
    assert replace.request_headers_to_add[0].append_action == 2  # OVERWRITE_IF_EXISTS_OR_ADD
    matching, mismatching = action(Mismatch.ADD)
    assert matchers(matching)["x-a"].string_match.exact == "1" and not matching.request_headers_to_add
    wrong = matchers(mismatching)["x-a"]
    assert wrong.invert_match and wrong.treat_missing_header_as_empty
    assert mismatching.request_headers_to_add[0].header.value == "1"
    matching, mismatching = action(Mismatch.DELETE)
    assert not matching.request_headers_to_remove and list(mismatching.request_headers_to_remove) == ["x-a"]
    too_many = tuple(HeaderMatch(name=f"X-{i}", value="v", mismatch=Mismatch.ADD) for i in range(5))
    with pytest.raises(TranslationError):
        routes((HTTPRule(header_matches=too_many),))


def test_listener_and_cluster() -> None:
    settings = ProxySettings(upstream_mark=0xA00)
    listener = build_listener(15001, "l7gate-http-15001", settings)
    assert listener.transparent.value
    assert listener.address.socket_address.address == "0.0.0.0"
    assert listener.additional_addresses[0].address.socket_address.address == "::"
    assert listener.listener_filters[0].name == "envoy.filters.listener.original_dst"
    assert list(rt.listener_route_names(listener)) == ["l7gate-http-15001"]
    cluster = build_cluster(settings)
    assert cluster.type == cluster.ORIGINAL_DST and cluster.lb_policy == cluster.CLUSTER_PROVIDED
    (option,) = cluster.upstream_bind_config.socket_options
    assert (option.level, option.name, option.int_value) == (1, 36, 0xA00)


def test_snapshot_is_deterministic_and_consistent() -> None:
    ports = {15001: (HTTPRule(method="GET", path="/public"),), 15002: ()}
    one, two = snapshot_of(ports, ProxySettings()), snapshot_of(ports, ProxySettings())
    assert one.problems() == []
    for type_url in (rt.CLUSTER, rt.LISTENER, rt.ROUTE):
        assert one.version(type_url) == two.version(type_url)


def test_translator_reencodes_only_what_changed() -> None:
    translator = Translator()
    ports = {15000 + i: (HTTPRule(method="GET", path=f"/p{i}"),) for i in range(10)}
    first = translator.snapshot(ports, ProxySettings())
    assert translator.encoded == 21  # 1 cluster + 10 listeners + 10 route configurations
    ports[15003] = (HTTPRule(method="PUT"),)
    second = translator.snapshot(ports, ProxySettings())
    assert translator.encoded == 22
    assert first.version(rt.LISTENER) == second.version(rt.LISTENER)
    changed = [n for n, r in second.resources(rt.ROUTE).items() if first.resources(rt.ROUTE)[n] != r]
    assert changed == ["l7gate-http-15003"]


def test_bootstrap_example_is_current() -> None:
    config = bootstrap(**EXAMPLE)
    assert config["dynamic_resources"]["ads_config"]["set_node_on_first_message_only"] is True
    assert (REPO / "envoy" / "bootstrap.example.yaml").read_text() == render(config)
    assert yaml.safe_load(render(config)) == config


def test_audit_mode_forwards_what_no_rule_allows() -> None:
    rules = (HTTPRule(method="GET", path="/public"),)
    config = build_route_configuration("r", rules, ProxySettings(), audit=True)
    (virtual_host,) = config.virtual_hosts
    last = virtual_host.routes[-1]
    assert last.name == AUDIT_ROUTE and last.match.prefix == "" and last.route.cluster
    assert not any(r.HasField("direct_response") and r.name == "deny" for r in virtual_host.routes)
    assert virtual_host.routes[0].direct_response.status == 403  # CONNECT stays refused
    # deny_all wins over audit (a retired port), and the translator keeps audit and enforcing apart
    deny_all = build_route_configuration("r", rules, ProxySettings(), deny_all=True, audit=True)
    assert deny_all.virtual_hosts[0].routes[-1].direct_response.status == 403
    translator = Translator()
    enforcing = translator.snapshot({15001: rules}, ProxySettings())
    audited = translator.snapshot({15001: rules}, ProxySettings(), audit={15001})
    assert enforcing.version(rt.ROUTE) != audited.version(rt.ROUTE)
    assert enforcing.version(rt.LISTENER) == audited.version(rt.LISTENER)


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("/public/..;x/admin", True),
        ("/public/.;x/admin", True),
        ("/public/;x/../admin", True),
        ("/;jsessionid=1", True),
        ("/public/..%3Bx/admin", True),
        ("/public/..%3bx/admin", True),
        ("/public/x%3By", True),
        ("/public/%252e%252e/admin", True),
        ("/public/%252F", True),
        ("/public/%255c", True),
        ("/public/%253B", True),
        ("/public", False),
        ("/public/x;y", True),
        ("/api/secret;.json", True),  # /api/secret to Tomcat, although a rule /api/.*\\.json matches
        ("/public/..x/y", False),
        ("/public/%2541", False),
        ("/public/.well-known", False),
    ],
)
def test_ambiguous_path_regex(path: str, refused: bool) -> None:
    # RouteMatch.safe_regex sees the path without the query string (a ;/%3B in the query is fine).
    assert (re2.fullmatch(AMBIGUOUS_PATH, path) is not None) is refused
    assert re2.compile(AMBIGUOUS_PATH).programsize < 100  # Envoy's default RE2 program size limit


def test_listener_joins_repeated_headers_routes_websocket_and_rewrites_local_403() -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    listener = build_listener(15001, "l7gate-http-15001", ProxySettings())
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    names = [f.name for f in hcm.http_filters]
    assert names == ["envoy.filters.http.lua", FAULT_FILTER, "envoy.filters.http.router"]
    assert {u.upgrade_type for u in hcm.upgrade_configs} == {"CONNECT", "websocket"}
    (mapper,) = hcm.local_reply_config.mappers
    assert mapper.filter.status_code_filter.comparison.value.default_value == 403
    assert mapper.body.inline_string == DENY_BODY


def test_audit_mode_still_refuses_ambiguous_paths() -> None:
    config = build_route_configuration("r", (), ProxySettings(), audit=True)
    assert config.virtual_hosts[0].routes[1].name == AMBIGUOUS_PATH_ROUTE
