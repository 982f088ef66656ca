"""``l7gate policy trace``: what ``--to``/``--from`` name, ambiguous names, ``--policies`` and the help."""

from __future__ import annotations

from pathlib import Path

import pytest
from resolve_helpers import endpoints, policies
from typer.testing import CliRunner

import l7.cli.trace_cmd  # noqa: F401  (registers the command)
from l7.cli import app
from l7.trace import TraceError, trace

# An allow-all egress policy: whatever --to is resolved to, the egress allows it.
ALLOW_ALL = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-all, namespace: ns1}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [all]
"""
# A policy of ns2 that denies nothing but puts ns2's pods into ingress default deny.
DENY_INGRESS_NS2 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-ingress, namespace: ns2}
spec:
  endpointSelector: {}
  ingress: [{}]
"""
ENDPOINTS = {
    "nodes": [{"name": "node-a", "ips": ["192.168.0.1"]}],
    "namespaces": {"ns1": {"labels": {}}, "ns2": {"labels": {}}},
    "endpoints": [
        {"name": "client", "namespace": "ns1", "labels": {"app": "client"}, "ips": ["10.0.1.1"]},
        {"name": "web", "namespace": "ns1", "labels": {"app": "web"}, "ips": ["10.0.1.2"]},
        {"name": "web", "namespace": "ns2", "labels": {"app": "web"}, "ips": ["10.0.2.2"]},
        {"name": "db", "namespace": "ns2", "labels": {"app": "db"}, "ips": ["10.0.2.3"]},
        {"name": "client", "namespace": "ns2", "labels": {"app": "client"}, "ips": ["10.0.2.1"]},
        {"name": "solo", "namespace": "ns2", "labels": {"app": "solo"}, "ips": ["10.0.2.4"]},
    ],
    "services": [
        {"name": "cache", "namespace": "ns2", "selector": {"app": "db"}},
        {"name": "cache", "namespace": "ns3", "backends": ["10.0.3.9"]},
    ],
    "fqdns": {"api.example.com": ["203.0.113.5"], "intranet": ["203.0.113.6"]},
}
ENDPOINTS_YAML = """\
nodes: [{name: node-a, ips: [192.168.0.1]}]
namespaces: {ns1: {labels: {}}, ns2: {labels: {}}}
endpoints:
  - {name: client, namespace: ns1, labels: {app: client}, ips: [10.0.1.1]}
  - {name: web, namespace: ns1, labels: {app: web}, ips: [10.0.1.2]}
  - {name: web, namespace: ns2, labels: {app: web}, ips: [10.0.2.2]}
  - {name: solo, namespace: ns2, labels: {app: solo}, ips: [10.0.2.4]}
fqdns: {api.example.com: [203.0.113.5]}
"""


def _trace(source: str, destination: str) -> tuple[str, str, tuple[str, ...]]:
    result = trace(policies(ALLOW_ALL), endpoints(ENDPOINTS), source, destination, 80, "TCP")
    return result.verdict, result.destination, result.notes


# -- --to: what a name is ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nobody", "wbe", "NODE-A", "10.0.0.300", "a..b", "-x.com"])
def test_an_unknown_name_is_an_error_not_an_outside_peer(name: str) -> None:
    with pytest.raises(TraceError, match=f"--to: no endpoint, node, service or IP named '{name}'"):
        _trace("ns1/client", name)


def test_an_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(TraceError, match=r"named 'sol' \(did you mean 'solo'\?\)"):
        _trace("ns1/client", "sol")
    with pytest.raises(TraceError, match=r"no endpoint or service named 'ns2/sol' \(did you mean 'ns2/solo'"):
        _trace("ns1/client", "ns2/sol")


def test_a_name_under_fqdns_is_a_dns_name_with_or_without_a_dot() -> None:
    assert _trace("ns1/client", "api.example.com") == ("allowed", "api.example.com (203.0.113.5)", ())
    assert _trace("ns1/client", "intranet") == ("allowed", "intranet (203.0.113.6)", ())
    assert _trace("ns1/client", "API.Example.com.")[:2] == ("allowed", "API.Example.com. (203.0.113.5)")


def test_a_dotted_name_not_under_fqdns_is_traced_as_world_with_a_note() -> None:
    verdict, shown, notes = _trace("ns1/client", "unknown.example.org")
    assert (verdict, shown) == ("allowed", "unknown.example.org")
    assert notes == (
        "unknown.example.org is not known to the endpoints file (not listed under fqdns:): "
        "traced as an outside name with no address",
    )


def test_pods_nodes_services_and_ips_still_resolve() -> None:
    assert _trace("ns1/client", "solo")[1] == "ns2/solo"
    assert _trace("ns1/client", "node-a")[1] == "node node-a (reserved:remote-node)"
    assert _trace("ns1/client", "10.0.2.4")[1] == "ns2/solo"
    assert _trace("ns1/client", "8.8.8.8")[1] == "8.8.8.8"
    assert _trace("ns1/client", "ns2/cache")[1] == "ns2/db (service ns2/cache)"
    # a bare Service name resolves in the source's namespace first
    assert _trace("ns2/client", "cache")[1] == "ns2/db (service ns2/cache)"


# -- ambiguous bare names ------------------------------------------------------------------------------


def test_a_pod_name_of_several_namespaces_is_ambiguous() -> None:
    with pytest.raises(TraceError, match="--to 'web': ambiguous: ns1/web, ns2/web — use NAMESPACE/NAME"):
        _trace("ns1/client", "web")
    with pytest.raises(
        TraceError, match="--from 'client': ambiguous: ns1/client, ns2/client — use NAMESPACE/NAME"
    ):
        _trace("client", "ns1/web")
    assert _trace("ns1/client", "ns2/web")[1] == "ns2/web"


def test_a_service_name_of_several_other_namespaces_is_ambiguous() -> None:
    with pytest.raises(
        TraceError, match="--to 'cache': ambiguous: ns2/cache, ns3/cache — use NAMESPACE/NAME"
    ):
        _trace("ns1/client", "cache")


# -- the command ---------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    (tmp_path / "allow.yaml").write_text(ALLOW_ALL)
    (tmp_path / "deny.yaml").write_text(DENY_INGRESS_NS2)
    (tmp_path / "endpoints.yaml").write_text(ENDPOINTS_YAML)
    return tmp_path / "allow.yaml", tmp_path / "deny.yaml", tmp_path / "endpoints.yaml"


def _run(files: tuple[Path, Path, Path], *args: str, both: bool = False) -> tuple[int, str, str]:
    allow, deny, eps = files
    extra = ["--policies", str(deny)] if both else []
    command = ["policy", "trace", "--policies", str(allow), *extra, "--endpoints", str(eps), "--port", "80"]
    result = CliRunner().invoke(app, [*command, *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_unknown_to_exits_2(files: tuple[Path, Path, Path]) -> None:
    code, out, err = _run(files, "--from", "client", "--to", "nobody")
    assert (code, out) == (2, "")
    assert err.startswith("error: --to: no endpoint, node, service or IP named 'nobody'")


def test_cli_ambiguous_exits_2(files: tuple[Path, Path, Path]) -> None:
    code, out, err = _run(files, "--from", "client", "--to", "web")
    assert (code, out) == (2, "")
    assert err == "error: --to 'web': ambiguous: ns1/web, ns2/web — use NAMESPACE/NAME\n"


def test_cli_dotted_unknown_name_says_so(files: tuple[Path, Path, Path]) -> None:
    code, out, _ = _run(files, "--from", "client", "--to", "other.example.org")
    assert code == 0
    assert "note: other.example.org is not known to the endpoints file (not listed under fqdns:)" in out


def test_cli_policies_is_repeatable(files: tuple[Path, Path, Path]) -> None:
    # one --policies: ns2/web has no policy, allowed; with the second file its ingress is default deny
    assert _run(files, "--from", "client", "--to", "ns2/web")[0] == 0
    code, out, _ = _run(files, "--from", "client", "--to", "ns2/web", both=True)
    assert code == 1
    assert "default deny: policies select ns2/web ingress" in out


def test_cli_help_documents_repeatable_policies_and_services() -> None:
    result = CliRunner().invoke(app, ["policy", "trace", "--help"])
    text = " ".join(result.stdout.replace("│", " ").split())  # the help's table, unwrapped
    assert "repeatable for several paths: --policies a.yaml --policies dir/" in text
    assert "SERVICE (NAME or NS/NAME)" in text
