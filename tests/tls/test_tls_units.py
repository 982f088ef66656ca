"""serverNames and TLS interception without a lab: policy validation (field paths), the SNI pattern
semantics, the xDS translation (SDS secrets, fail closed, rotation touches only the Secret), the agent's
secrets directory, and the Kubernetes side (secrets namespace, multi-key Secrets as directories)."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from l7.agent.secrets import load_secrets, load_tls_secrets
from l7.k8s import output
from l7.k8s import secrets as k8s_secrets
from l7.policy.documents import load_text
from l7.policy.regex import re2_error
from l7.policy.servernames import regex
from l7xds import resources as rt
from l7xds import tls as tl
from l7xds.translate import ProxySettings, Translator, snapshot_of


def _policy(port_rule: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "t", "namespace": "default"},
            "spec": {"endpointSelector": {}, "egress": [{"toPorts": [port_rule]}]},
        }
    )


def _errors(port_rule: dict[str, object]) -> dict[str, str]:
    return {e.path: e.message for e in load_text(_policy(port_rule), "t").errors}


def test_valid_tls_rules() -> None:
    assert (
        _errors({"ports": [{"port": "443", "protocol": "TCP"}], "serverNames": ["**.example.com", "*"]}) == {}
    )
    assert (
        _errors(
            {
                "ports": [{"port": "443", "protocol": "TCP"}],
                "terminatingTLS": {"secret": {"name": "a"}, "certificate": "x.crt"},
                "originatingTLS": {"secret": {"name": "b", "namespace": "default"}, "trustedCA": "ca.pem"},
                "rules": {"http": [{"method": "GET"}]},
            }
        )
        == {}
    )


def test_invalid_tls_rules_have_field_paths() -> None:
    errors = _errors(
        {"ports": [{"port": "0"}], "serverNames": ["ok.example.com", "bad name"], "rules": {"http": [{}]}}
    )
    base = "spec.egress[0].toPorts[0]"
    assert f"{base}.serverNames[1]" in errors
    assert f"{base}.ports" in errors  # not a specific port
    assert f"{base}.terminatingTLS" in errors  # HTTP rules on TLS need termination
    missing = _errors({"ports": [{"port": "443", "protocol": "TCP"}], "terminatingTLS": {}})
    assert missing == {f"{base}.terminatingTLS.secret": "required field missing"}


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*.cilium.io", "www.cilium.io", True),
        ("*.cilium.io", "cilium.io", False),
        ("*.cilium.io", "a.b.cilium.io", False),
        ("*cilium.io", "sub-cilium.io", True),
        ("*cilium.io", "www.cilium.io", False),
        ("sub*.cilium.io", "subdomain.cilium.io", True),
        ("sub*.cilium.io", "www.cilium.io", False),
        ("**.cilium.io", "app.cilium.io", True),
        ("**.cilium.io", "test.app.cilium.io", True),
        ("**.cilium.io", "cilium.io", False),
        ("*", "anything.example", True),
        ("API.Example.com", "api.example.COM.", True),
        ("api.example.com", "apixexample.com", False),
    ],
)
def test_server_name_patterns(pattern: str, name: str, matches: bool) -> None:
    """Cilium's CRD examples for serverNames (RE2 and Python agree on these regexes)."""
    assert bool(re.fullmatch(regex(pattern), name)) is matches


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=t", "-keyout", str(d / "k"), "-out", str(d / "c")],
        check=True, capture_output=True,
    )  # fmt: skip
    return {
        "tls.crt": (d / "c").read_text(),
        "tls.key": (d / "k").read_text(),
        "ca.crt": (d / "c").read_text(),
    }


INTERCEPT = tl.PortTLS((), tl.TLSRef("default", "srv"), tl.TLSRef("default", "ca"))


def test_server_names_stay_under_envoys_regex_limit() -> None:
    """Each name is its own matcher (a joined regex passes the RE2 limit with a few names), and a name
    whose own regex would pass it is a validation error, never a NACK."""
    names = tuple(f"{'*.' if i % 2 else '**.'}service-{i:02d}.some-long-zone.example.com" for i in range(30))
    snap = snapshot_of({15002: ()}, ProxySettings(), tls={15002: tl.PortTLS(names)})
    matchers = snap.resources(rt.LISTENER)["l7gate-proxy-15002"].message.filter_chain_matcher.matcher_list
    regexes = [m.predicate.single_predicate.value_match.safe_regex.regex for m in matchers.matchers]
    assert regexes == [regex(n) for n in names]
    assert all(re2_error(r) is None for r in regexes)
    errors = _errors(
        {"ports": [{"port": "443", "protocol": "TCP"}], "serverNames": ["a" * 80 + ".example.com"]}
    )
    path = "spec.egress[0].toPorts[0].serverNames[0]"
    assert path in errors and "Envoy's regex limit" in errors[path], errors


def test_translation_references_secrets_over_sds(pem: dict[str, str]) -> None:
    settings = ProxySettings(
        tls_secrets={("default", "srv"): pem, ("default", "ca"): {"ca.crt": pem["ca.crt"]}}
    )
    snap = snapshot_of(
        {15001: (), 15002: ()}, settings, tls={15001: INTERCEPT, 15002: tl.PortTLS(("a.example",))}
    )
    assert snap.problems() == []
    assert sorted(snap.resources(rt.SECRET)) == [
        "l7gate-tls-ca/default/ca/ca.crt",
        "l7gate-tls-cert/default/srv/tls.crt,tls.key",
    ]
    listener = snap.resources(rt.LISTENER)["l7gate-proxy-15002"].message
    assert [f.name for f in listener.listener_filters][-1] == "envoy.filters.listener.tls_inspector"
    assert listener.filter_chain_matcher.matcher_list.matchers[
        0
    ].predicate.single_predicate.value_match.safe_regex.regex
    assert len(snap.resources(rt.CLUSTER)) == 2  # plain ORIGINAL_DST and the TLS one


def test_rotation_changes_only_the_secret(pem: dict[str, str], tmp_path: Path) -> None:
    translator = Translator()
    before = translator.snapshot(
        {15001: ()},
        ProxySettings(tls_secrets={("default", "srv"): pem, ("default", "ca"): pem}),
        tls={15001: INTERCEPT},
    )
    rotated = dict(pem, **{"tls.crt": pem["ca.crt"] + "\n"})  # other bytes, still valid PEM
    after = translator.snapshot(
        {15001: ()},
        ProxySettings(tls_secrets={("default", "srv"): rotated, ("default", "ca"): pem}),
        tls={15001: INTERCEPT},
    )
    for type_url in (rt.LISTENER, rt.CLUSTER, rt.ROUTE):
        assert before.version(type_url) == after.version(type_url), rt.short(type_url)
    assert before.version(rt.SECRET) != after.version(rt.SECRET)


@pytest.mark.parametrize(
    "secrets",
    [
        {},
        {("default", "srv"): {"tls.crt": "garbage"}},
        {("default", "srv"): {"tls.crt": "x", "tls.key": "y"}},
    ],
)
def test_missing_or_malformed_secret_fails_closed(secrets: dict[tuple[str, str], dict[str, str]]) -> None:
    snap = snapshot_of({15001: ()}, ProxySettings(tls_secrets=secrets), tls={15001: INTERCEPT})
    assert snap.problems() == []
    assert dict(snap.resources(rt.SECRET)) == {}
    listener = snap.resources(rt.LISTENER)["l7gate-proxy-15001"].message
    assert not listener.filter_chains[0].HasField("transport_socket")
    never = listener.filter_chain_matcher.matcher_list.matchers[0].predicate.single_predicate
    assert never.value_match.exact == "0"  # destination port 0: no connection matches
    assert tl.secret_problems(tl.TLSRef("default", "srv"), secrets, terminating=True)


def test_originating_secret_with_a_client_certificate_is_mtls(pem: dict[str, str]) -> None:
    """tls.crt/tls.key in the originatingTLS secret: the TLS cluster presents them (Cilium's mTLS
    upstream); ca.crt alone: no client certificate; one of the two: the port fails closed."""
    ca_only = {"ca.crt": pem["ca.crt"]}
    for items, mtls in ((pem, True), (ca_only, False)):
        translator = Translator()
        snap = translator.snapshot(
            {15001: ()},
            ProxySettings(tls_secrets={("default", "srv"): pem, ("default", "ca"): items}),
            tls={15001: INTERCEPT},
        )
        assert snap.problems() == []
        cluster = next(c.message for n, c in snap.resources(rt.CLUSTER).items() if "-tls-" in n)
        context = tls_pb2.UpstreamTlsContext()
        cluster.transport_socket.typed_config.Unpack(context)
        certs = [c.name for c in context.common_tls_context.tls_certificate_sds_secret_configs]
        assert certs == (["l7gate-tls-cert/default/ca/tls.crt,tls.key"] if mtls else [])
        assert ("l7gate-tls-cert/default/ca/tls.crt,tls.key" in snap.resources(rt.SECRET)) is mtls
    half = {"ca.crt": pem["ca.crt"], "tls.crt": pem["tls.crt"]}
    assert tl.secret_problems(tl.TLSRef("default", "ca"), {("default", "ca"): half}, terminating=False) == [
        ("tls.key", "secret default/ca: item 'tls.key' missing")
    ]


def test_merge_of_members() -> None:
    a, b = tl.PortTLS(("a.example",)), tl.PortTLS(("b.example",))
    assert tl.merge([a, b]) == tl.PortTLS(("a.example", "b.example"))
    assert tl.merge([None, None]) is None
    with pytest.raises(ValueError):
        tl.merge([a, None])
    with pytest.raises(ValueError):
        tl.merge([INTERCEPT, a])


def test_certificate_and_key_that_are_not_a_pair_fail_closed_before_envoy(
    pem: dict[str, str], tmp_path: Path
) -> None:
    """Envoy would NACK a mismatched pair (holding back every later change of the node): the agent's
    secret loading finds it, and the port refuses connections with the problem in its status."""
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-out", str(other / "k")],
        check=True, capture_output=True,
    )  # fmt: skip
    good, bad = tmp_path / "s" / "default" / "good", tmp_path / "s" / "default" / "bad"
    for d, key in ((good, pem["tls.key"]), (bad, (other / "k").read_text())):
        d.mkdir(parents=True)
        (d / "tls.crt").write_text(pem["tls.crt"])
        (d / "tls.key").write_text(key)
    secrets = load_tls_secrets(tmp_path / "s")
    assert secrets[("default", "good")].keys() == {"tls.crt", "tls.key"}
    assert set(secrets[("default", "bad")]) == {tl.PROBLEM_ITEM}
    ref = tl.TLSRef("default", "bad")
    [(item, problem)] = tl.secret_problems(ref, secrets, terminating=True)
    assert item == "" and "not a certificate and its key" in problem
    assert not tl.usable(tl.PortTLS((), ref, None), secrets)
    assert tl.usable(tl.PortTLS((), tl.TLSRef("default", "good"), None), secrets)
    # a CA that is PEM but not a certificate OpenSSL loads: the item is reported, the upstream fails closed
    ca = tmp_path / "s" / "default" / "ca"
    ca.mkdir()
    der = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    (ca / "ca.crt").write_text(f"-----BEGIN CERTIFICATE-----\n{der}\n-----END CERTIFICATE-----\n")
    secrets = load_tls_secrets(tmp_path / "s")
    [(item, problem)] = tl.secret_problems(tl.TLSRef("default", "ca"), secrets, terminating=False)
    assert item == "ca.crt" and "not a CA certificate" in problem
    assert not tl.usable(tl.PortTLS((), None, tl.TLSRef("default", "ca")), secrets)


def test_agent_reads_secret_directories_beside_values(tmp_path: Path) -> None:
    (tmp_path / "default" / "srv").mkdir(parents=True)
    (tmp_path / "default" / "srv" / "tls.crt").write_text("C")
    (tmp_path / "default" / "token").write_text("v\n")
    assert load_tls_secrets(tmp_path) == {("default", "srv"): {"tls.crt": "C"}}
    assert load_secrets(tmp_path) == {("default", "token"): "v"}


def test_k8s_secrets_namespace_and_directories(tmp_path: Path) -> None:
    obj = {
        "spec": {
            "egress": [
                {"toPorts": [{"terminatingTLS": {"secret": {"name": "srv"}}}]},
                {"toPorts": [{}, {"originatingTLS": {"secret": {"name": "ca", "namespace": "other"}}}]},
            ]
        }
    }
    refs = k8s_secrets.tls_refs(obj)
    assert refs == [
        ("spec.egress[0].toPorts[0].terminatingTLS.secret", None, "srv"),
        ("spec.egress[1].toPorts[1].originatingTLS.secret", "other", "ca"),
    ]
    assert k8s_secrets.ref_errors(refs, "l7gate-secrets") == [
        (
            "spec.egress[1].toPorts[1].originatingTLS.secret.namespace",
            "secrets are read only from the secrets namespace 'l7gate-secrets', not 'other'",
        )
    ]
    data = {k: base64.b64encode(v.encode()).decode() for k, v in {"tls.crt": "C", "tls.key": "K"}.items()}
    found = {("l7gate-secrets", "srv"): {"data": data}}
    values = k8s_secrets.tls_values(refs[:1], "l7gate-secrets", found)
    assert values == {("default", "srv"): {"tls.crt": "C", "tls.key": "K"}}
    assert output.write_secrets(tmp_path, {("default", "token"): "v"}, values)
    assert load_tls_secrets(tmp_path) == values
    assert not output.write_secrets(tmp_path, {("default", "token"): "v"}, values)  # nothing changed
    assert output.write_secrets(tmp_path, {}, {})
    assert list(tmp_path.iterdir()) == []
