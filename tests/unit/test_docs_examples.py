"""The examples of ``docs/policy-reference.md`` and ``docs/user-guide.md`` work as the documents show.

* Every ```` ```yaml ```` block of the policy reference is a valid policy. A block that starts at
  ``spec:``/``specs:`` is the body of a CiliumNetworkPolicy named ``example`` (namespace ``default``).
  A block right after a ``<!-- invalid -->`` line must fail with exactly the errors of the
  ```` ```text ```` block that follows it (the source named ``example.yaml``).
* Every ```` ```console ```` block of both documents is replayed from the repository root:
  ``$ l7gate ...`` (or ``$ .venv/bin/l7gate ...``; a line ending in ``\\`` continues on the next) runs
  in-process, ``$ echo $?`` prints the previous exit status, and the output must equal the lines that
  follow the command.
  Examples that need root (the lab) or the network are in ```` ```sh ```` blocks, which are not run.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import l7.cli.policy_cmds
import l7.cli.trace_cmd  # noqa: F401  (both register their commands)
from l7.cli import app
from l7.policy.documents import load_text

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "policy-reference.md"
GUIDE = REPO / "docs" / "user-guide.md"
WRAPPER = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: example\n"
INVALID = "<!-- invalid -->"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    before: str  # the last non-empty line before the fence


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```") and lines[i] != "```":
            start = i
            before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            i += 1
            body: list[str] = []
            while lines[i] != "```":
                body.append(lines[i])
                i += 1
            found.append(Block(lines[start][3:].strip(), "\n".join(body) + "\n", start + 1, before))
        i += 1
    return found


def _policy_blocks() -> list[tuple[Block, Block | None]]:
    """Each YAML block with, for an invalid one, the text block holding its expected errors."""
    found = blocks(REFERENCE)
    out: list[tuple[Block, Block | None]] = []
    for n, block in enumerate(found):
        if block.lang != "yaml":
            continue
        expected = None
        if block.before.strip() == INVALID:
            expected = found[n + 1]
            assert expected.lang == "text", f"line {block.line}: an invalid example needs a text block next"
        out.append((block, expected))
    return out


POLICIES = _policy_blocks()


@pytest.mark.parametrize(("block", "expected"), POLICIES, ids=[f"line-{b.line}" for b, _ in POLICIES])
def test_reference_policy(block: Block, expected: Block | None) -> None:
    text = block.text if block.text.startswith("apiVersion:") else WRAPPER + block.text
    result = load_text(text, "example.yaml")
    errors = [str(e) for e in result.errors]
    if expected is None:
        assert errors == [], f"{REFERENCE.name} line {block.line}"
        assert result.policies
    else:
        assert errors == expected.text.splitlines(), f"{REFERENCE.name} line {block.line}"


def test_reference_has_examples() -> None:
    assert len(POLICIES) >= 10 and any(expected for _, expected in POLICIES)


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    output: str
    where: str


def _commands(path: Path) -> list[Command]:
    out: list[Command] = []
    for block in blocks(path):
        if block.lang != "console":
            continue
        lines = block.text.splitlines()
        i = 0
        while i < len(lines):
            assert lines[i].startswith("$ "), f"{path.name} line {block.line + 1 + i}: expected '$ command'"
            where = f"{path.name} line {block.line + 1 + i}"
            command = lines[i][2:]
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            i += 1
            output: list[str] = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            out.append(Command(tuple(shlex.split(command)), "".join(ln + "\n" for ln in output), where))
    return out


SESSIONS = [(path, _commands(path)) for path in (REFERENCE, GUIDE)]


@pytest.mark.parametrize(("path", "commands"), SESSIONS, ids=[p.name for p, _ in SESSIONS])
def test_console_examples(path: Path, commands: list[Command], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "100")
    assert commands, f"{path.name} has no console examples"
    status = 0
    for command in commands:
        if command.argv == ("echo", "$?"):
            got = f"{status}\n"
        else:
            assert command.argv[0] in ("l7gate", ".venv/bin/l7gate"), f"{command.where}: not l7gate"
            result = CliRunner().invoke(app, list(command.argv[1:]))
            got, status = result.output, result.exit_code
        assert got == command.output, f"{command.where}: {shlex.join(command.argv)}"
