"""``l7gate policy trace`` through the CLI: a default deny names the policies behind it, a request of the
wrong kind for the proxy a port goes to is a usage error (exit 2), named ports are accepted."""

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
metadata: {name: client-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.shop.test"}]}
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-api, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: "/api/.*"}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-metrics, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: monitor}}]
    toPorts:
    - ports: [{port: metrics, protocol: TCP}]
"""
ENDPOINTS = """\
namespaces: {shop: {labels: {}}, kube-system: {labels: {}}}
endpoints:
  - {name: client, namespace: shop, labels: {app: client}, ips: [10.0.1.1]}
  - {name: monitor, namespace: shop, labels: {app: monitor}, ips: [10.0.1.3]}
  - {name: web, namespace: shop, labels: {app: web}, ips: [10.0.1.2], ports: {http: 8080, metrics: 9090}}
  - {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}, ips: [10.0.0.10]}
"""


@pytest.fixture
def args(tmp_path: Path) -> list[str]:
    (tmp_path / "p.yaml").write_text(POLICIES)
    (tmp_path / "e.yaml").write_text(ENDPOINTS)
    return [
        "policy",
        "trace",
        "--policies",
        str(tmp_path / "p.yaml"),
        "--endpoints",
        str(tmp_path / "e.yaml"),
    ]


def _run(argv: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, argv)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def test_default_deny_names_the_policies(args: list[str]) -> None:
    code, out = _run([*args, "--from", "shop/monitor", "--to", "shop/web", "--port", "8080/TCP"])
    assert code == 1
    assert (
        "default deny: policies select shop/web ingress (CiliumNetworkPolicy/shop/web-api, "
        "CiliumNetworkPolicy/shop/web-metrics) and no rule allows this flow"
    ) in out
    code, out = _run([*args, "--from", "shop/client", "--to", "10.9.9.9", "--port", "443/TCP", "-o", "json"])
    data = json.loads(out)
    assert code == 1 and data["verdict"] == "denied"
    assert data["default_deny_by"] == ["CiliumNetworkPolicy/shop/client-egress"]
    assert data["directions"]["egress"]["default_deny_by"] == ["CiliumNetworkPolicy/shop/client-egress"]


def test_http_on_a_dns_proxy_port_is_a_usage_error(args: list[str]) -> None:
    code, out = _run(
        [
            *args,
            "--from",
            "shop/client",
            "--to",
            "kube-system/coredns",
            "--port",
            "53/UDP",
            "--http",
            "GET",
            "/",
        ]
    )
    assert code == 2
    assert out.startswith("error: --http: shop/client egress 53/UDP is redirected to the DNS proxy")
    code, out = _run(
        [*args, "--from", "shop/client", "--to", "shop/web", "--port", "8080/TCP", "--dns", "a.shop.test"]
    )
    assert code == 2 and "is redirected to Envoy for HTTP rules" in out
    # the right kind of request is still a verdict
    code, out = _run(
        [
            *args,
            "--from",
            "shop/client",
            "--to",
            "kube-system/coredns",
            "--port",
            "53/UDP",
            "--dns",
            "x.shop.test",
        ]
    )
    assert code == 0 and "DNS query x.shop.test allowed by CiliumNetworkPolicy/shop/client-egress" in out


def test_named_ports(args: list[str]) -> None:
    code, out = _run(
        [*args, "--from", "shop/monitor", "--to", "shop/web", "--port", "metrics/TCP", "-o", "json"]
    )
    data = json.loads(out)
    assert code == 0, out
    assert (data["port"], data["port_name"], data["verdict"]) == (9090, "metrics", "allowed")
    code, out = _run(
        [*args, "--from", "shop/client", "--to", "shop/web", "--port", "http", "--http", "GET", "/api/items"]
    )
    assert code == 0 and out.startswith("shop/client → shop/web 8080/TCP (port http)")
    code, out = _run([*args, "--from", "shop/client", "--to", "shop/web", "--port", "grpc/TCP"])
    assert code == 2
    assert "error: --port grpc: shop/web has no port named 'grpc' (its ports: http=8080, metrics=9090)" in out
    code, out = _run([*args, "--from", "shop/client", "--to", "10.9.9.9", "--port", "http/TCP"])
    assert code == 2 and "a named port needs a destination endpoint" in out
    code, out = _run([*args, "--from", "shop/client", "--to", "shop/web", "--port", "-x/TCP"])
    assert code == 2 and "NAME/PROTO" in out
