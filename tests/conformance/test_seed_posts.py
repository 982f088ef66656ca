"""Every seed policy in deploy/examples/seeds/ is the post's own YAML: the same lines as the post from the
line its ``# Source:`` header names (indentation aside where the header says so), except the changes the
header declares. The posts are the reference directory's ``seeds/``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEEDS = REPO / "deploy" / "examples" / "seeds"
# The header names the post relative to the repository, as the reference directory's default place.
SOURCE = re.compile(r"# Source: \.\./shared/(?P<file>seeds/\S+) line (?P<line>\d+); (?P<note>.+)")


@pytest.mark.parametrize("path", sorted(SEEDS.glob("*.yaml")), ids=lambda p: p.name)
def test_seed_file_matches_its_source(path: Path, reference: Path) -> None:
    """Same lines as the post (indentation aside), except the changes the header comment declares."""
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    match = SOURCE.fullmatch(header)
    assert match, header
    source = (reference / match["file"]).read_text(encoding="utf-8").splitlines()
    start = int(match["line"]) - 1
    assert source[start].startswith("apiVersion:")
    if "Helm template rendered" in match["note"]:
        return
    exact = match["note"].startswith("verbatim")
    expected = source[start : start + len(lines) + 2]
    if "namespace:" in match["note"]:
        lines = [line for line in lines if not line.startswith("  namespace: ")]
    if "suffixed -2" in match["note"]:
        lines = [line.replace("-2", "") if line.startswith("  name:") else line for line in lines]
    expected = expected[: len(lines)]
    if exact:
        assert lines == expected
    else:
        assert [line.strip() for line in lines] == [line.strip() for line in expected]
