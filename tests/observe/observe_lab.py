"""The lab the observe and metrics lab tests run: one node with a server (HTTP rules: GET /public from
the client), a client (egress: the server, google.com by toFQDNs on port 80, DNS for google.com only),
another pod (no rule lets it reach the server: its packets are dropped) and two world hosts."""

from __future__ import annotations

TOPOLOGY = {
    "nodes": [{"name": "n1"}],
    "pods": [
        {
            "name": "server",
            "labels": {"app": "server"},
            "server": {"kind": "http", "paths": {"/public": "public\n", "/private": "private\n"}},
        },
        {"name": "client", "labels": {"app": "client"}},
        {"name": "other", "labels": {"app": "other"}},
    ],
    "world": [
        {"name": "google", "names": ["google.com"], "servers": ["http"]},
        {"name": "naver", "names": ["naver.com"], "servers": ["http"]},
    ],
}

POLICIES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules: {http: [{method: GET, path: /public}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: server}}]
    - toFQDNs: [{matchName: google.com}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - toEndpoints:
        - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules: {dns: [{matchName: google.com}]}
"""
