"""``l7gate policy validate``: exit codes and output."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import l7.cli.policy_cmds  # noqa: F401  (registers the command)
from l7.cli import app

GOOD = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-public-from-prod
specs:
- endpointSelector: {}
- endpointSelector: {}
"""
BAD = """\
apiVersion: l7gate.io/v1alpha1
kind: L7ClusterwideNetworkPolicy
metadata:
  name: bad
spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{path: "(?!x)"}]
  - toEntities: [mars]
"""


def test_valid(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD)
    result = CliRunner().invoke(app, ["policy", "validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"ok  CiliumNetworkPolicy default/allow-public-from-prod  ({tmp_path / 'p.yaml'}#0)  2 rules\n"
    )


def test_invalid_lists_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "---\n" + BAD)
    result = CliRunner().invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 1
    # every document in document order: the valid first document's ok line, then the errors of the second
    assert result.stdout.splitlines() == [
        f"ok  CiliumNetworkPolicy default/allow-public-from-prod  ({bad}#0)  2 rules",
        f"{bad}[1] (L7ClusterwideNetworkPolicy bad): spec.egress[0].toPorts[0].rules.http[0].path: "
        "invalid RE2 regex: invalid perl operator: (?!",
        f"{bad}[1] (L7ClusterwideNetworkPolicy bad): spec.egress[1].toEntities[0]: unknown entity 'mars' "
        "(one of all, cluster, health, host, ingress, init, kube-apiserver, none, remote-node, unmanaged, "
        "world, world-ipv4, world-ipv6)",
    ]


def test_missing_path(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["policy", "validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "no such file or directory" in result.stderr


def test_examples_validate() -> None:
    examples = Path(__file__).resolve().parents[3] / "deploy" / "examples"
    result = CliRunner().invoke(app, ["policy", "validate", str(examples)])
    assert result.exit_code == 0, result.output
    assert all(line.startswith("ok  ") for line in result.stdout.splitlines())


def test_no_documents_is_an_error(tmp_path: Path) -> None:
    """An empty directory (or files without documents) is almost always a mistake: exit 1."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a policy\n")
    result = CliRunner().invoke(app, ["policy", "validate", str(empty)])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr == f"no policy documents found in {empty}\n"
    blank = tmp_path / "blank.yaml"
    blank.write_text("---\n# nothing here\n")
    result = CliRunner().invoke(app, ["policy", "validate", str(empty), str(blank)])
    assert result.exit_code == 1, result.output
    assert result.stderr == f"no policy documents found in {empty}, {blank}\n"
