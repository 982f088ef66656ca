"""A node's Envoy rejecting the HTTP configuration shows in the Enforced view of HTTP policies only."""

from __future__ import annotations

from typing import Any

from l7.k8s.controller import has_http_rules, proxy_rejection

HTTP_POLICY = """
apiVersion: l7gate.io/v1alpha1
kind: L7NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
"""
L4_POLICY = """
apiVersion: l7gate.io/v1alpha1
kind: L7NetworkPolicy
metadata: {name: q, namespace: default}
spec:
  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
"""


def test_http_policies_are_told_of_a_rejection() -> None:
    assert has_http_rules(HTTP_POLICY) and not has_http_rules(L4_POLICY)
    agent: dict[str, Any] = {"services": {"envoy": {"rejected": None}}}
    assert proxy_rejection(agent) is None
    rejected = {"type": "RDS", "resources": ["l7gate-http-15001"], "error": "bad"}
    agent["services"]["envoy"]["rejected"] = rejected
    message = proxy_rejection(agent)
    assert message is not None and "RDS l7gate-http-15001" in message and "previous" in message
