from __future__ import annotations

import textwrap

from l7.policy.documents import LoadResult, load_text

HEADER = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p
"""


def load(text: str) -> LoadResult:
    return load_text(textwrap.dedent(text), "t.yaml")


def spec_errors(spec: str, header: str = HEADER) -> list[tuple[str, str]]:
    """Load a policy whose ``spec:`` body is ``spec`` (YAML, any indentation) and return its errors."""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    result = load_text(header + "spec:\n" + body + "\n", "t.yaml")
    return [(e.path, e.message) for e in result.errors]
