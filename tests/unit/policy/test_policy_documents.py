"""The loader: kinds, metadata, spec/specs, YAML errors, duplicates, every error collected."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import load

from l7.policy.documents import Kind, PolicySourceError, load_paths, load_text

OK_SPEC = "spec:\n  endpointSelector: {}\n"


def doc(
    api: str = "cilium.io/v2", kind: str = "CiliumNetworkPolicy", meta: str = "name: p", body: str = OK_SPEC
) -> str:
    meta = "\n".join("  " + line for line in meta.splitlines())
    return f"apiVersion: {api}\nkind: {kind}\nmetadata:\n{meta}\n{body}"


@pytest.mark.parametrize(
    ("api", "kind", "namespace"),
    [
        ("cilium.io/v2", "CiliumNetworkPolicy", "default"),
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy", None),
        ("l7gate.io/v1alpha1", "L7NetworkPolicy", "default"),
        ("l7gate.io/v1alpha1", "L7ClusterwideNetworkPolicy", None),
    ],
)
def test_kinds(api: str, kind: str, namespace: str | None) -> None:
    result = load_text(doc(api, kind), "f.yaml")
    assert result.errors == ()
    (policy,) = result.policies
    assert (policy.kind, policy.api_version, policy.name, policy.namespace) == (
        Kind(kind),
        api,
        "p",
        namespace,
    )
    assert policy.rule_paths == ("spec",) and policy.source == "f.yaml"


def test_other_kinds_are_rejected() -> None:
    errors = load(doc("networking.k8s.io/v1", "NetworkPolicy")).errors
    assert [(e.path, e.index) for e in errors] == [("kind", 0)]
    assert "unsupported kind networking.k8s.io/v1 NetworkPolicy" in errors[0].message
    (error,) = load(doc("l7gate.io/v1alpha1", "CiliumNetworkPolicy")).errors
    assert (error.path, error.message) == (
        "apiVersion",
        "CiliumNetworkPolicy belongs to apiVersion cilium.io/v2, not l7gate.io/v1alpha1",
    )


def test_metadata() -> None:
    server_set = (
        "name: p\nnamespace: ns\nuid: x\nresourceVersion: '1'\ngeneration: 2\ncreationTimestamp: 2025-01-01\n"
        "managedFields: []\nlabels: {a: b}\nannotations: {c: d}"
    )
    result = load(doc(meta=server_set) + "status: {x: 1}\n")
    assert result.errors == () and result.policies[0].namespace == "ns"
    cases = {
        "namespace: ns": None,
        "name: Bad_Name": "metadata.name",
        "namespace: ns\nname: p\nowner: me": "metadata.owner",
        "name: p\nnamespace: NS": "metadata.namespace",
        "name: p\nlabels: {a: 1}": "metadata.labels",
    }
    for meta, path in cases.items():
        errors = load(doc(meta=meta)).errors
        assert [e.path for e in errors] == [path or "metadata.name"], (meta, errors)
    (error,) = load(doc(kind="CiliumClusterwideNetworkPolicy", meta="name: p\nnamespace: x")).errors
    assert error.path == "metadata.namespace" and "cluster-wide" in error.message


def test_spec_and_specs() -> None:
    body = "spec:\n  endpointSelector: {}\nspecs:\n- endpointSelector: {}\n- nodeSelector: {}\n"
    result = load(doc(kind="CiliumClusterwideNetworkPolicy", body=body))
    assert result.errors == ()
    assert result.policies[0].rule_paths == ("spec", "specs[0]", "specs[1]")
    (error,) = load(doc(body="")).errors
    assert error.path == "spec" and "required" in error.message
    errors = load(doc(body="specs:\n- endpointSelector: {}\n- egress: []\n")).errors
    assert [e.path for e in errors] == ["specs[1]"]
    (error,) = load(doc(body=OK_SPEC + "extra: 1\n")).errors
    assert (error.path, error.message) == ("extra", "unsupported field")


def test_error_format() -> None:
    (error,) = load(doc(body="spec:\n  endpointSelector: {}\n  egress:\n  - toRequires: []\n")).errors
    assert str(error) == (
        "t.yaml[0] (CiliumNetworkPolicy default/p): spec.egress[0].toRequires: "
        "unsupported by l7gate (a Cilium feature l7gate does not implement)"
    )


def test_all_errors_of_all_documents_are_collected() -> None:
    bad = """\
spec:
  endpointSelector:
    matchLabels: {app: 'a b'}
  egress:
  - toRequires: []
    toEntities: [nowhere]
  - toPorts:
    - ports: [{port: '99999'}]
  - toFQDNs: [{matchPattern: 'a..b'}]
    toCIDR: [1.2.3.4]
"""
    text = "\n---\n".join([doc(body=bad), "", doc(meta="name: q"), doc(meta="name: r", body="spec: 5\n")])
    result = load_text(text, "m.yaml")
    got = sorted((e.index, e.path) for e in result.errors)
    assert got == [
        (0, "spec.egress[0].toEntities[0]"),
        (0, "spec.egress[0].toRequires"),
        (0, "spec.egress[1].toPorts[0].ports[0].port"),
        (0, "spec.egress[2].toFQDNs"),
        (0, "spec.egress[2].toFQDNs[0].matchPattern"),
        (0, "spec.endpointSelector.matchLabels[app]"),
        (3, "spec"),
    ]
    assert [p.name for p in result.policies] == ["q"]
    assert result.policies[0].index == 2  # the empty document keeps its position


def test_duplicates() -> None:
    text = "\n---\n".join(
        [doc(), doc(meta="name: p\nnamespace: other"), doc(meta="name: p\nnamespace: default")]
    )
    result = load_text(text, "d.yaml")
    assert len(result.policies) == 2
    (error,) = result.errors
    assert (error.index, error.path) == (2, "metadata.name")
    assert "already defined in d.yaml[0]" in error.message


def test_yaml_errors() -> None:
    (error,) = load_text(doc() + "---\nkey: [unclosed\n", "y.yaml").errors
    assert error.index == 1 and error.message.startswith("YAML error at line") and error.path == ""
    (error,) = load_text("a: 1\n\tb: 2\n", "tab.yaml").errors
    assert "line 2" in error.message
    (error,) = load_text(doc() + "spec: {}\n", "dup.yaml").errors
    assert "duplicate key 'spec'" in error.message
    (error,) = load_text("- a\n- b\n", "list.yaml").errors
    assert "must be a mapping" in error.message
    assert load_text("---\n---\n", "empty.yaml") == load_text("", "empty.yaml")


def test_load_paths(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.yml").write_text(doc(meta="name: two"))
    (tmp_path / "a.yaml").write_text(doc(meta="name: one"))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    result = load_paths([tmp_path])
    assert result.errors == ()
    assert [(p.name, Path(p.source).name) for p in result.policies] == [("one", "a.yaml"), ("two", "2.yml")]
    with pytest.raises(PolicySourceError, match="no such file"):
        load_paths([tmp_path / "missing.yaml"])
