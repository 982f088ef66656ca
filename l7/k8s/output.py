"""The controller's output: the agent's files-mode inputs, each replaced atomically.

::

    <dir>/policies -> policies.d/<n>-<hash>     one YAML per valid policy object (symlink swap)
    <dir>/endpoints.json                        the endpoints file (write to a temporary, rename)
    <secrets>/<namespace>/<name>                values of secrets headerMatches refer to (mode 0600)
    <secrets>/<namespace>/<name>/<item>         TLS secrets: the Secret's keys as files (mode 0600)

The agent resolves the ``policies`` symlink once per look, so it sees either the old or the new set,
never a mix. The current and the previous set are kept (an agent may still be reading the previous).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from l7.agent import watch


class PolicySet:
    """Writes policy sets under ``directory`` and points ``directory/policies`` at the newest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.base = directory / "policies.d"
        self.link = directory / "policies"
        self._files: dict[str, str] | None = None
        self.digest: str | None = None

    def write(self, files: Mapping[str, str]) -> tuple[str, bool]:
        """Install ``files`` (relative path → text) unless they are what is installed already.
        Returns (content hash as the agent computes it, whether a new set was written)."""
        if self._files == dict(files) and self.digest is not None and self.link.exists():
            return self.digest, False
        self.base.mkdir(parents=True, exist_ok=True)
        existing = sorted(
            (p for p in self.base.iterdir() if p.is_dir() and p.name.split("-")[0].isdigit()),
            key=lambda p: int(p.name.split("-")[0]),
        )
        number = 1 + (int(existing[-1].name.split("-")[0]) if existing else 0)
        staging = self.base / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for rel, text in sorted(files.items()):
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        digest = watch.content_hash(staging)
        target = self.base / f"{number}-{digest}"
        staging.rename(target)
        tmp_link = self.directory / f".policies-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        tmp_link.symlink_to(Path("policies.d") / target.name)
        tmp_link.replace(self.link)
        for old in existing[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        self._files = dict(files)
        self.digest = digest
        return digest, True


def write_json(path: Path, data: Mapping[str, Any], mode: int = 0o644) -> bool:
    """Replace ``path`` with ``data`` as JSON unless it holds that already. True when written."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)
    return True


def _write_private(path: Path, value: str) -> bool:
    """Replace ``path`` atomically with ``value`` (mode 0600) unless it already holds it."""
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == value:
            return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value)
    tmp.replace(path)
    return True


def write_secrets(
    directory: Path,
    values: Mapping[tuple[str, str], str],
    tls: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
) -> bool:
    """Make ``directory`` hold exactly ``values`` as ``<namespace>/<name>`` files and ``tls`` as
    ``<namespace>/<name>/<item>`` directories (mode 0600 files, each replaced atomically, only when it
    changed; others removed). Returns True when anything changed."""
    tls = tls or {}
    changed = False
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for (namespace, name), value in values.items():
        path = directory / namespace / name
        path.parent.mkdir(mode=0o700, exist_ok=True)
        changed |= _write_private(path, value)
    for (namespace, name), items in tls.items():
        secret_dir = directory / namespace / name
        secret_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for item, value in items.items():
            changed |= _write_private(secret_dir / item, value)
        for old in list(secret_dir.iterdir()):
            if old.name not in items:
                old.unlink()
                changed = True
    for namespace_dir in list(directory.iterdir()):
        if not namespace_dir.is_dir():
            continue
        for file in list(namespace_dir.iterdir()):
            if file.is_dir():
                if (namespace_dir.name, file.name) not in tls:
                    shutil.rmtree(file)
                    changed = True
            elif (namespace_dir.name, file.name) not in values:
                file.unlink()
                changed = True
        with contextlib.suppress(OSError):
            namespace_dir.rmdir()  # only when empty
    return changed
