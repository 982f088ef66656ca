"""``policy trace`` on the seed documents' scenarios: the outcomes the blog posts show."""

from __future__ import annotations

import pytest
from resolve_helpers import seed_000, seed_002, seeds

from l7.trace import HTTPRequest, trace

GET_PUBLIC = HTTPRequest("GET", "/public")


@pytest.mark.parametrize(
    ("src", "dst", "request_", "verdict", "layer", "rule"),
    [
        (
            "client-prod",
            "service-pod",
            GET_PUBLIC,
            "allowed",
            "http",
            "spec.ingress[0].toPorts[0].rules.http[0]",
        ),
        (
            "client-prod",
            "service-pod",
            HTTPRequest("GET", "/private"),
            "denied",
            "http",
            "spec.ingress[0].toPorts[0]",
        ),
        (
            "client-prod",
            "service-pod",
            HTTPRequest("GET", "/public/x"),
            "denied",
            "http",
            "spec.ingress[0].toPorts[0]",
        ),
        (
            "client-prod",
            "service-pod",
            HTTPRequest("GET", "/public?a=1"),
            "denied",
            "http",
            "spec.ingress[0].toPorts[0]",
        ),
        (
            "client-prod",
            "service-pod",
            HTTPRequest("POST", "/public"),
            "denied",
            "http",
            "spec.ingress[0].toPorts[0]",
        ),
        ("client-dev", "service-pod", GET_PUBLIC, "denied", "l3l4", None),
    ],
)
def test_allow_public_from_prod(  # noqa: PLR0917
    src: str, dst: str, request_: HTTPRequest, verdict: str, layer: str, rule: str | None
) -> None:
    result = trace(seeds("002-allow-public-from-prod"), seed_002(), src, dst, 80, "TCP", http=request_)
    assert (result.verdict, result.layer, result.rule) == (verdict, layer, rule)
    if rule is not None:
        assert result.policy == "CiliumNetworkPolicy/default/allow-public-from-prod"


def test_allow_public_from_prod_other_port_is_default_deny() -> None:
    result = trace(seeds("002-allow-public-from-prod"), seed_002(), "client-prod", "service-pod", 8080, "TCP")
    assert (result.verdict, result.layer) == ("denied", "l3l4")
    assert result.steps[1].reason == "default-deny"


@pytest.mark.parametrize(
    ("method", "path", "headers", "verdict", "rule"),
    [
        ("GET", "/path1", (), "allowed", "spec.ingress[0].toPorts[0].rules.http[0]"),
        ("GET", "/path1x", (), "denied", None),
        ("PUT", "/path1", (), "denied", None),
        ("PUT", "/path2", (("X-My-Header", "true"),), "allowed", "spec.ingress[0].toPorts[0].rules.http[1]"),
        ("PUT", "/path2", (("x-my-header", "true"),), "allowed", "spec.ingress[0].toPorts[0].rules.http[1]"),
        ("PUT", "/path2", (("X-My-Header", "false"),), "denied", None),
        ("PUT", "/path2", (), "denied", None),
    ],
)
def test_l7_rule(
    method: str, path: str, headers: tuple[tuple[str, str], ...], verdict: str, rule: str | None
) -> None:
    request = HTTPRequest(method, path, "my-service", headers)
    result = trace(seeds("002-l7-rule"), seed_002(), "frontend", "my-service", 80, "TCP", http=request)
    assert result.verdict == verdict and result.layer == "http"
    if rule:
        assert result.rule == rule


@pytest.mark.parametrize(
    ("names", "dst", "port", "verdict"),
    [
        # egress: [] alone enables nothing (Cilium: len(Egress) == 0): everything stays allowed
        (("002-default-deny-dev",), "webpod-1", (80, "TCP"), "allowed"),
        (("002-default-deny-dev", "002-dev-to-host"), "k8s-w1", (8, "ICMP"), "allowed"),
        (("002-default-deny-dev", "002-dev-to-host"), "192.168.10.101", (22, "TCP"), "allowed"),
        (("002-default-deny-dev", "002-dev-to-host"), "k8s-ctr", (8, "ICMP"), "denied"),
        (("002-default-deny-dev", "002-dev-to-host"), "192.168.10.102", (8, "ICMP"), "denied"),
        (("002-default-deny-dev", "002-dev-to-host"), "webpod-1", (80, "TCP"), "denied"),
        (("002-default-deny-dev", "002-dev-to-host"), "coredns", (53, "UDP"), "denied"),
        (
            ("002-default-deny-dev", "002-dev-to-host", "002-dev-to-remote-node"),
            "k8s-ctr",
            (8, "ICMP"),
            "allowed",
        ),
        (
            ("002-default-deny-dev", "002-dev-to-host", "002-dev-to-remote-node"),
            "192.168.10.102",
            (8, "ICMP"),
            "allowed",
        ),
        (
            ("002-default-deny-dev", "002-dev-to-host", "002-dev-to-remote-node"),
            "webpod-1",
            (80, "TCP"),
            "denied",
        ),
    ],
)
def test_dev_entities(names: tuple[str, ...], dst: str, port: tuple[int, str], verdict: str) -> None:
    result = trace(seeds(*names), seed_002(), "dev-pod", dst, *port)
    assert result.verdict == verdict, result.to_text()


@pytest.mark.parametrize(
    ("dst", "port", "dns", "verdict", "layer"),
    [
        ("api.github.com", (443, "TCP"), None, "allowed", "l3l4"),
        ("api.github.com", (80, "TCP"), None, "allowed", "l3l4"),  # toFQDNs without toPorts: every port
        ("140.82.112.5", (443, "TCP"), None, "allowed", "l3l4"),
        ("support.github.com", (443, "TCP"), None, "denied", "l3l4"),
        ("8.8.8.8", (443, "TCP"), None, "denied", "l3l4"),
        ("kube-system/coredns", (53, "UDP"), "support.github.com", "allowed", "dns"),
        ("kube-system/coredns", (53, "TCP"), "api.github.com", "allowed", "dns"),
        ("kube-system/coredns", (80, "TCP"), None, "denied", "l3l4"),
        ("service-pod", (80, "TCP"), None, "denied", "l3l4"),
    ],
)
def test_mediabot_fqdn(dst: str, port: tuple[int, str], dns: str | None, verdict: str, layer: str) -> None:
    result = trace(seeds("002-fqdn"), seed_002(), "mediabot", dst, *port, dns=dns)
    assert (result.verdict, result.layer) == (verdict, layer), result.to_text()


@pytest.mark.parametrize(
    ("dst", "port", "dns", "verdict", "layer"),
    [
        ("google.com", (443, "TCP"), None, "allowed", "l3l4"),
        ("google.com", (80, "TCP"), None, "denied", "l3l4"),
        ("www.google.com", (443, "TCP"), None, "denied", "l3l4"),
        ("naver.com", (443, "TCP"), None, "denied", "l3l4"),
        ("kube-system/coredns", (53, "UDP"), "google.com", "allowed", "dns"),
        ("kube-system/coredns", (53, "UDP"), "GOOGLE.COM.", "allowed", "dns"),
        ("kube-system/coredns", (53, "UDP"), "naver.com", "denied", "dns"),
        ("kube-system/coredns", (53, "UDP"), "www.google.com", "denied", "dns"),
    ],
)
def test_demo_policy(dst: str, port: tuple[int, str], dns: str | None, verdict: str, layer: str) -> None:
    result = trace(seeds("000-demo-policy"), seed_000(), "demo-app", dst, *port, dns=dns)
    assert (result.verdict, result.layer) == (verdict, layer), result.to_text()
    if verdict == "allowed":
        assert result.policy == "CiliumNetworkPolicy/default/demo-policy"


def test_dns_refused_text() -> None:
    result = trace(
        seeds("000-demo-policy"), seed_000(), "demo-app", "kube-system/coredns", 53, "UDP", dns="naver.com"
    )
    assert "REFUSED" in result.to_text()


def test_seed_003_allow_all_egress_is_default_deny() -> None:
    """Seed 003's 'allow-all-egress' (egress: [{}]) puts the pods in default deny under Cilium."""
    result = trace(seeds("003-allow-all-egress"), seed_000(), "demo/curl", "google.com", 443, "TCP")
    assert (result.verdict, result.steps[0].reason) == ("denied", "default-deny")


def test_seed_003_client_fqdns() -> None:
    policies = seeds("003-allow-dns", "003-allow-egress-to-specific-domain")
    assert trace(policies, seed_000(), "demo/curl", "google.com", 443, "TCP").allowed
    assert trace(policies, seed_000(), "demo/curl", "mail.google.com", 443, "TCP").allowed
    assert trace(policies, seed_000(), "demo/curl", "api.github.com", 443, "TCP").allowed
    assert not trace(policies, seed_000(), "demo/curl", "naver.com", 443, "TCP").allowed
    dns = trace(policies, seed_000(), "demo/curl", "kube-system/coredns", 53, "UDP", dns="naver.com")
    assert (dns.verdict, dns.layer) == ("allowed", "dns")


def test_seed_001_to_entities_empty_denies_everything() -> None:
    result = trace(seeds("001-default-deny"), seed_000(), "fqdn-lab/tbox", "google.com", 443, "TCP")
    assert (result.verdict, result.steps[0].reason) == ("denied", "default-deny")
    result = trace(seeds("001-default-deny"), seed_000(), "fqdn-lab/tbox", "kube-system/coredns", 53, "UDP")
    assert not result.allowed


def test_no_policy_allowed_by_default() -> None:
    result = trace((), seed_002(), "client-dev", "service-pod", 80, "TCP")
    assert result.allowed and result.policy is None
    assert "no policy selects" in result.to_text()
