"""``l7gate policy trace`` with TLS: serverNames decide on the SNI (``--sni``, or the ``--http`` request's
host on an intercepting port), a connection without SNI is refused on an SNI port, an intercepted request
whose host is none of the serverNames gets 403, rules that disagree on TLS refuse the port; exit 0
allowed, 1 denied, 2 bad usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l7.cli import app, register

register()

POLICIES = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: sni, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: api.example.com}, {matchName: evil.example.net}]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      serverNames: [api.example.com, "*.cdn.example.com"]
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "8443", protocol: TCP}]
      serverNames: [web.shop.test]
      terminatingTLS: {secret: {name: intercept}}
      rules: {http: [{method: GET, path: "/api/.*"}]}
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
  - toEndpoints: [{matchLabels: {app: plain}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: intercept-plain, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: plain}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      terminatingTLS: {secret: {name: intercept}}
      rules: {http: [{method: POST}]}
"""
ENDPOINTS = """\
namespaces: {shop: {labels: {}}}
endpoints:
  - {name: client, namespace: shop, labels: {app: client}, ips: [10.0.1.1]}
  - {name: web, namespace: shop, labels: {app: web}, ips: [10.0.1.2]}
  - {name: plain, namespace: shop, labels: {app: plain}, ips: [10.0.1.3]}
fqdns:
  api.example.com: [192.0.2.10]
  evil.example.net: [192.0.2.10]
"""


@pytest.fixture
def args(tmp_path: Path) -> list[str]:
    (tmp_path / "p.yaml").write_text(POLICIES)
    (tmp_path / "e.yaml").write_text(ENDPOINTS)
    base = [
        "policy",
        "trace",
        "--policies",
        str(tmp_path / "p.yaml"),
        "--endpoints",
        str(tmp_path / "e.yaml"),
    ]
    return [*base, "--from", "shop/client"]


def _run(argv: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, argv)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def _json(argv: list[str]) -> tuple[int, dict[str, object]]:
    code, out = _run([*argv, "-o", "json"])
    return code, json.loads(out)


def test_sni_allowed_and_refused_on_one_address(args: list[str]) -> None:
    to = [*args, "--to", "api.example.com", "--port", "443/TCP"]
    code, data = _json([*to, "--sni", "api.example.com"])
    assert code == 0, data
    assert (data["verdict"], data["layer"]) == ("allowed", "tls")
    assert (data["policy"], data["rule"]) == (
        "CiliumNetworkPolicy/shop/sni",
        "spec.egress[0].toPorts[0].serverNames[0]",
    )
    # the pattern: one label in front of cdn.example.com, case and trailing dot ignored
    code, data = _json([*to, "--sni", "IMG.cdn.example.com."])
    assert code == 0 and data["rule"] == "spec.egress[0].toPorts[0].serverNames[1]"
    code, out = _run([*to, "--sni", "a.b.cdn.example.com"])
    assert code == 1 and "TLS SNI a.b.cdn.example.com matches no serverNames" in out
    # evil.example.net shares the address: allowed at L3/L4 (toFQDNs), refused by its SNI
    code, out = _run([*args, "--to", "evil.example.net", "--port", "443/TCP", "--sni", "evil.example.net"])
    assert code == 1
    assert "TLS SNI evil.example.net matches no serverNames (api.example.com, *.cdn.example.com)" in out
    assert (
        "verdict: DENIED (tls) by CiliumNetworkPolicy/shop/sni spec.egress[0].toPorts[0].serverNames" in out
    )


def test_an_sni_port_needs_an_sni(args: list[str]) -> None:
    code, data = _json([*args, "--to", "api.example.com", "--port", "443/TCP"])
    assert code == 1 and (data["verdict"], data["layer"]) == ("denied", "tls")
    assert "a connection without SNI is refused (pass --sni NAME)" in str(data["directions"])
    # serverNames without terminatingTLS: the bytes pass through, --http's host is no SNI
    code, out = _run([*args, "--to", "api.example.com", "--port", "443/TCP", "--http", "GET", "/"])
    assert code == 1 and "without SNI is refused" in out


def test_intercepted_port_reads_the_sni_from_the_request_host(args: list[str]) -> None:
    to = [*args, "--to", "shop/web", "--port", "8443/TCP"]
    code, out = _run([*to, "--http", "GET", "/api/items", "--host", "web.shop.test"])
    assert code == 0, out
    rule = "CiliumNetworkPolicy/shop/sni spec.egress[1].toPorts[0].serverNames[0]"
    assert f"TLS SNI web.shop.test allowed by {rule}" in out
    assert (
        "GET /api/items allowed by CiliumNetworkPolicy/shop/sni spec.egress[1].toPorts[0].rules.http[0]"
        in out
    )
    assert "terminatingTLS default/intercept: secrets are not read offline" in out
    code, data = _json([*to, "--http", "GET", "/admin", "--host", "web.shop.test"])
    assert code == 1 and (data["verdict"], data["layer"]) == ("denied", "http")
    # the default host is the destination (shop/web, a pod): no name a client sends as SNI
    code, out = _run([*to, "--http", "GET", "/api/items"])
    assert code == 1 and "serverNames web.shop.test apply on this port: a connection without SNI" in out
    # an SNI that is listed, a host that is not: 403 (no domain fronting through the interception)
    code, out = _run([*to, "--sni", "web.shop.test", "--http", "GET", "/api/items", "--host", "other.test"])
    assert (
        code == 1 and "host other.test is none of the serverNames (web.shop.test): 403 Access denied" in out
    )
    # without --http the TLS step decides and the HTTP rules wait for a request
    code, out = _run([*to, "--sni", "web.shop.test"])
    assert code == 0 and "pass --http METHOD PATH to evaluate the HTTP rules" in out


def test_plaintext_and_tls_rules_on_one_port_refuse_it(args: list[str]) -> None:
    code, out = _run([*args, "--to", "shop/plain", "--port", "8080/TCP", "--http", "GET", "/"])
    assert code == 1
    assert (
        "plaintext HTTP rules (CiliumNetworkPolicy/shop/sni spec.egress[3].toPorts[0]) and TLS rules "
        "(CiliumNetworkPolicy/shop/intercept-plain spec.egress[0].toPorts[0]) on the same port and peer: "
        "the port refuses every connection"
    ) in out


def test_sni_where_there_is_no_tls_is_a_usage_error(args: list[str]) -> None:
    code, out = _run([*args, "--to", "shop/web", "--port", "80/TCP", "--sni", "web.shop.test"])
    assert code == 2
    assert out.startswith("error: --sni: shop/client egress 80/TCP is redirected to Envoy for plaintext HTTP")
