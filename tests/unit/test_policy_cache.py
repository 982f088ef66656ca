"""The parsed-YAML cache of the agent's policy files (l7.agent.policy_cache through PolicyFiles): a
restart validates cached documents without parsing them, with the same results; a changed file (same
size and mtime), a YAML error and a corrupt cache file are never taken from the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from l7.agent.inputs import Loaded, PolicyFiles
from l7.policy.documents import load_documents, load_text, parse_documents

REPO = Path(__file__).resolve().parents[2]

POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web-{n}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: client}}}}]
      toPorts: [{{ports: [{{port: "{port}", protocol: TCP}}]}}]
"""
BAD_SCHEMA = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {ingres: []}\n"
BAD_YAML = "apiVersion: cilium.io/v2\nkind: [unclosed\n---\n" + POLICY.format(n=9, port=90)


def _files(root: Path) -> dict[str, str]:
    texts = {f"p{n}.yaml": POLICY.format(n=n, port=8000 + n) for n in range(5)}
    texts |= {"bad-schema.yaml": BAD_SCHEMA, "bad-yaml.yaml": BAD_YAML}
    for name, text in texts.items():
        (root / name).write_text(text)
    return texts


def _same(a: Loaded, b: Loaded) -> None:
    assert a.policies == b.policies
    assert a.errors == b.errors
    assert a.content_hash == b.content_hash


@pytest.mark.parametrize(
    "text",
    [
        POLICY.format(n=1, port=80),
        BAD_SCHEMA,
        *(p.read_text() for p in sorted((REPO / "deploy" / "examples").rglob("*.yaml"))[:20]),
    ],
)
def test_documents_validate_as_the_text(text: str) -> None:
    documents = parse_documents(text)
    assert documents is not None
    assert load_documents(documents, "f.yaml") == load_text(text, "f.yaml")


def test_restart_takes_the_parse_from_the_cache(tmp_path: Path) -> None:
    root, cache = tmp_path / "policies", tmp_path / "state" / "policy-cache-n1.bin"
    root.mkdir()
    cache.parent.mkdir()
    _files(root)
    first = PolicyFiles(cache)
    before = first.load(root)
    assert first.cache.hits == 0 and before.errors  # the two bad files report
    assert first.save_cache() and cache.exists()
    assert not first.save_cache()  # nothing new

    again = PolicyFiles(cache)
    after = again.load(root)
    assert again.cache.hits == 6  # every file but the one YAML refuses
    _same(after, before)
    _same(after, PolicyFiles().load(root))  # as without any cache


def test_a_changed_file_with_the_same_size_and_mtime_is_parsed(tmp_path: Path) -> None:
    root, cache = tmp_path / "policies", tmp_path / "cache.bin"
    root.mkdir()
    _files(root)
    first = PolicyFiles(cache)
    first.load(root)
    first.save_cache()
    path = root / "p1.yaml"
    st = path.stat()
    path.write_text(POLICY.format(n=1, port=7001))  # same length as port 8001
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns

    again = PolicyFiles(cache)
    loaded = again.load(root)
    assert again.cache.hits == 5
    _same(loaded, PolicyFiles().load(root))
    web1 = next(p for p in loaded.policies if p.name == "web-1")
    assert "7001" in repr(web1.rules)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "other-python"])
def test_a_corrupt_cache_is_ignored(tmp_path: Path, damage: str) -> None:
    root, cache = tmp_path / "policies", tmp_path / "cache.bin"
    root.mkdir()
    _files(root)
    first = PolicyFiles(cache)
    want = first.load(root)
    first.save_cache()
    data = cache.read_bytes()
    if damage == "garbage":
        data = os.urandom(len(data))
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    else:
        data = data.replace(b"python3.", b"python2.", 1)
    cache.write_bytes(data)

    again = PolicyFiles(cache)
    _same(again.load(root), want)
    assert again.cache.hits == 0
    assert again.save_cache()  # rewritten whole
    third = PolicyFiles(cache)
    _same(third.load(root), want)
    assert third.cache.hits == 6
