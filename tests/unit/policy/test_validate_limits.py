"""Cilium's schema limits: at most 40 ports per port rule and 40 ICMP fields per icmps entry."""

from __future__ import annotations

from l7.policy.documents import load_text

HEAD = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: many}
spec:
  endpointSelector: {}
  ingress:
"""


def _ports(n: int) -> str:
    ports = "".join(f'      - {{port: "{1000 + i}"}}\n' for i in range(n))
    return HEAD + "  - toPorts:\n    - ports:\n" + ports


def _icmps(n: int) -> str:
    return HEAD + "  - icmps:\n    - fields:\n" + "".join(f"      - {{type: {i}}}\n" for i in range(n))


def test_forty_ports_and_icmp_fields_are_the_limit() -> None:
    assert not load_text(_ports(40)).errors and not load_text(_icmps(40)).errors
    (err,) = load_text(_ports(41)).errors
    assert "spec.ingress[0].toPorts[0].ports" in str(err) and "at most 40" in str(err)
    (err,) = load_text(_icmps(41)).errors
    assert "spec.ingress[0].icmps[0].fields" in str(err) and "at most 40" in str(err)
