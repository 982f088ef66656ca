"""The topology's ``secrets`` and node ``servers`` (pure: validation, and the secret files written with
real openssl into a temporary directory; no lab)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from l7.lab import TopologyError, certs, parse_topology
from l7.lab.secrets import write_secrets


def topology(**extra: Any) -> dict[str, Any]:
    return {
        "nodes": [{"name": "n1", "servers": [{"kind": "http", "port": 9100}]}],
        "pods": [{"name": "web", "server": "https"}, {"name": "plain", "server": "http"}],
        "world": [{"name": "cdn", "names": ["api.example.com", "evil.example.net"]}],
        **extra,
    }


def test_secrets_and_node_servers_validated_with_field_paths() -> None:
    topo = parse_topology(
        topology(
            secrets=[{"name": "intercept", "issue": ["api.example.com"]}, {"name": "ca", "trust": "cdn"}]
        )
    )
    assert [s.namespace for s in topo.secrets] == ["default", "default"]
    assert topo.nodes[0].servers[0].effective_port == 9100
    bad = topology(
        secrets=[
            {"name": "a", "issue": ["api.example.com"], "trust": "cdn"},
            {"name": "b"},
            {"name": "c", "issue": []},
            {"name": "d", "trust": "plain"},
            {"name": "d", "namespace": "default", "trust": "nobody"},
        ]
    )
    bad["nodes"][0]["servers"].append({"kind": "tcp-echo", "port": 9100})
    with pytest.raises(TopologyError) as err:
        parse_topology(bad)
    text = str(err.value)
    assert "secrets[0]: Value error, give exactly one of: issue, trust" in text
    assert "secrets[1]: Value error, give exactly one of: issue, trust" in text
    assert "secrets[2].issue: Value error, give at least one DNS name" in text
    bad.pop("secrets")
    with pytest.raises(TopologyError) as err:
        parse_topology(bad)
    assert "nodes[0].servers[1].port: port 9100 is used twice" in str(err.value)
    bad["nodes"][0]["servers"].pop()
    bad["secrets"] = [{"name": "d", "trust": "plain"}, {"name": "d", "trust": "nobody"}]
    with pytest.raises(TopologyError) as err:
        parse_topology(bad)
    problems = [str(issue) for issue in err.value.issues]
    assert any("secrets[0].trust" in p and "'plain' serves TLS" in p for p in problems), problems
    assert any("secrets[1].name" in p and "duplicate secret 'default/d'" in p for p in problems), problems


def _verify(ca: Path, cert: Path, name: str) -> subprocess.CompletedProcess[str]:
    argv = ["openssl", "verify", "-CAfile", str(ca), "-verify_hostname", name, str(cert)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_secret_files_issued_by_the_lab_ca_and_trusted_server_cert(tmp_path: Path) -> None:
    topo = parse_topology(
        topology(
            secrets=[
                {"name": "intercept", "namespace": "app", "issue": ["api.example.com"]},
                {"name": "upstream-ca", "trust": "cdn"},
            ]
        )
    )
    certs_dir, secrets_dir = tmp_path / "certs", tmp_path / "secrets"
    server_cert, _ = certs.self_signed(certs_dir, "cdn", ["api.example.com"], [])  # what lab up makes
    written = write_secrets(topo.secrets, certs_dir, secrets_dir)
    intercept, upstream = secrets_dir / "app" / "intercept", secrets_dir / "default" / "upstream-ca"
    assert sorted(p.name for p in intercept.iterdir()) == ["tls.crt", "tls.key"]
    assert (intercept / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (upstream / "ca.crt").read_text() == server_cert.read_text()
    assert {intercept / "tls.crt", intercept / "tls.key", upstream / "ca.crt"} <= set(written)
    ca = certs_dir / "lab-ca.crt"
    assert _verify(ca, intercept / "tls.crt", "api.example.com").returncode == 0
    assert _verify(ca, intercept / "tls.crt", "evil.example.net").returncode != 0
