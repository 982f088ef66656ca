"""A TLS secret that is missing or malformed shows in the POLICY's status (the node listed as failing,
with the field path), and goes away when the Secret is created; rules that disagree on TLS on one port
show in both policies' status. Real controller and agent loop against the in-process fake API server;
the agent's xDS service runs without an Envoy (nothing to ACK: publish does not wait)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fakeapi import FakeAPIServer
from kube_helpers import (
    controller_config,
    l7np,
    pod,
    running_agent,
    running_controller,
    wait_for,
)

from l7.agent.envoy import XdsOnlyService
from l7.lab import certs

SECRETS_NS = "l7gate-secrets"
PORT_443 = {"ports": [{"port": "443", "protocol": "TCP"}]}
INTERCEPT = {
    **PORT_443,
    "terminatingTLS": {"secret": {"namespace": SECRETS_NS, "name": "intercept"}},
    "rules": {"http": [{"method": "GET"}]},
}


def _egress(*port_rules: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "egress": [{"toCIDR": ["203.0.113.0/24"], "toPorts": [dict(p) for p in port_rules]}],
    }


class EnvoyAbsent(XdsOnlyService):
    """The agent's xDS service (secrets watcher, TLS checks, status) with no Envoy to wait for."""

    def publish(self, *_args: Any, **_kwargs: Any) -> bool:
        return True


def _cluster(server: FakeAPIServer) -> None:
    server.create("namespaces", {"metadata": {"name": "shop"}})
    server.create("nodes", {"metadata": {"name": "n1"}, "status": {"addresses": []}})
    server.create("pods", pod("web", "shop", "10.1.0.10", "n1", {"app": "web"}))


def _status(server: FakeAPIServer, name: str) -> dict[str, Any]:
    return server.get("l7networkpolicies", name, "shop").get("status") or {}


def _counts(server: FakeAPIServer, name: str, enforcing: int, failing: int) -> dict[str, Any] | None:
    st = _status(server, name)
    return st if (st.get("enforcingNodes"), st.get("failingNodes")) == (enforcing, failing) else None


def _secret(directory: Path) -> dict[str, Any]:
    ca = certs.authority(directory, "ca")
    crt, key = certs.issue(directory, "intercept", ca, ["api.example.com"])
    data = {"tls.crt": crt.read_bytes(), "tls.key": key.read_bytes()}
    return {
        "metadata": {"name": "intercept", "namespace": SECRETS_NS},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def test_missing_tls_secret_fails_the_policy_with_its_field_path(
    server: FakeAPIServer, tmp_path: Path
) -> None:
    _cluster(server)
    cfg = controller_config(tmp_path / "n1", "n1", secret_refresh=0.2)
    xds = EnvoyAbsent()
    with running_controller(server, cfg), running_agent(cfg, [xds]):
        server.create("l7networkpolicies", l7np("tls", "shop", _egress(INTERCEPT)))
        st = wait_for("the node failing in the policy's status", lambda: _counts(server, "tls", 0, 1))
        path = "spec.egress[0].toPorts[0].terminatingTLS.secret"
        message = f"agent: {path}: secret {SECRETS_NS}/intercept not found (the port refuses connections)"
        assert st["failures"] == [{"node": "n1", "message": message}]
        enforced = next(c for c in st["conditions"] if c["type"] == "Enforced")
        assert (enforced["status"], enforced["reason"]) == ("False", "Failed")
        assert path in enforced["message"]
        valid = next(c for c in st["conditions"] if c["type"] == "Valid")
        assert valid["status"] == "True"  # the policy is valid: the node cannot enforce it

        # a Secret without the key: still failing, now naming the item
        broken = _secret(tmp_path / "pki")
        del broken["data"]["tls.key"]
        server.create("secrets", broken)
        st = wait_for(
            "the missing item named",
            lambda: (
                (s := _status(server, "tls")).get("failures")
                and "[tls.key]" in s["failures"][0]["message"]
                and s
            ),
        )
        assert st["failures"][0]["message"] == (
            f"agent: {path}[tls.key]: secret {SECRETS_NS}/intercept: item 'tls.key' missing "
            "(the port refuses connections)"
        )

        # the whole Secret: the node enforces the policy, the failure is gone
        server.delete("secrets", "intercept", SECRETS_NS)
        server.create("secrets", _secret(tmp_path / "pki"))
        st = wait_for("the node enforcing", lambda: _counts(server, "tls", 1, 0), timeout=15)
        assert st["failures"] == []
        assert xds.status()["tls_errors"] == []


def test_rules_that_disagree_on_tls_fail_both_policies(server: FakeAPIServer, tmp_path: Path) -> None:
    """Plain HTTP rules and terminatingTLS rules for the same peer and port: the port refuses every
    connection, and each policy's status names the other rule."""
    _cluster(server)
    server.create("secrets", _secret(tmp_path / "pki"))
    cfg = controller_config(tmp_path / "n1", "n1", secret_refresh=0.2)
    with running_controller(server, cfg), running_agent(cfg, [EnvoyAbsent()]):
        server.create("l7networkpolicies", l7np("tls", "shop", _egress(INTERCEPT)))
        wait_for("the TLS policy enforced", lambda: _counts(server, "tls", 1, 0))
        plain = {**PORT_443, "rules": {"http": [{"method": "POST"}]}}
        server.create("l7networkpolicies", l7np("plain", "shop", _egress(plain)))
        st_plain = wait_for("the plain policy failing", lambda: _counts(server, "plain", 0, 1))
        st_tls = wait_for("the TLS policy failing", lambda: _counts(server, "tls", 0, 1))
        plain_message = st_plain["failures"][0]["message"]
        tls_message = st_tls["failures"][0]["message"]
        head = "agent: spec.egress[0].toPorts[0]: plaintext HTTP rules and TLS rules"
        assert plain_message.startswith(head)
        assert "this rule (plaintext HTTP)" in plain_message
        other = "L7NetworkPolicy/shop/tls spec.egress[0].toPorts[0] (terminatingTLS l7gate-secrets/intercept)"
        assert other in plain_message
        assert "this rule (terminatingTLS l7gate-secrets/intercept)" in tls_message
        assert "L7NetworkPolicy/shop/plain spec.egress[0].toPorts[0] (plaintext HTTP)" in tls_message
        assert "the port refuses connections" in tls_message
        server.delete("l7networkpolicies", "plain", "shop")
        wait_for("the TLS policy enforced again", lambda: _counts(server, "tls", 1, 0))
