"""The parsed YAML of the policy files, kept in the state directory so that a restart skips the parse.

::

    policy file ─► sha256 of its bytes (read every time) ─► (relative path, digest) in the cache?
        yes: its documents (marshal) ─► validated as ever (l7.policy.documents.load_documents)
        no:  YAML parse ─► validated ─► documents remembered; written at save()

Only the YAML step is cached, keyed by the file's content hash: a file whose bytes changed misses,
whatever its size or mtime say, and validation always runs on the documents (same errors, same
policies, the current source path). A file YAML refuses is not cached (its errors come from the
parse); documents marshal cannot hold (a YAML timestamp) neither.

The file: a magic line, the sha256 of the payload, then the payload (marshal of ``{key: documents
as marshal bytes}``). Anything unexpected (truncated, another format or Python, a checksum mismatch,
not the expected types) and the cache is ignored as a whole: the files are parsed. The cache is as
trusted as the rest of the agent's state directory (root's).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import marshal
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = f"l7gate-policy-cache 1 python{sys.version_info[0]}.{sys.version_info[1]}\n".encode()
_DIGEST = 32


def _key(rel: str, digest: str) -> str:
    return f"{rel}\0{digest}"


class PolicyCache:
    """See the module docstring. ``path`` None: nothing is kept (every parse is a parse)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, bytes] | None = None  # loaded on first use
        self._dirty = False
        self.hits = 0

    def _load(self) -> dict[str, bytes]:
        if self._entries is None:
            self._entries = self._read() if self.path is not None else {}
        return self._entries

    def _read(self) -> dict[str, bytes]:
        assert self.path is not None
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("policy cache %s: %s (parsing the files)", self.path, exc)
            return {}
        head, body = data[: len(MAGIC)], data[len(MAGIC) :]
        checksum, payload = body[:_DIGEST], body[_DIGEST:]
        if head != MAGIC or hashlib.sha256(payload).digest() != checksum:
            log.warning("policy cache %s is not one this agent wrote (parsing the files)", self.path)
            return {}
        try:
            entries = marshal.loads(payload)
        except (EOFError, ValueError, TypeError):
            entries = None
        if not isinstance(entries, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in entries.items()
        ):
            log.warning("policy cache %s cannot be read (parsing the files)", self.path)
            return {}
        return entries

    def get(self, rel: str, digest: str) -> list[object] | None:
        """The documents of the file ``rel`` whose content hash is ``digest``, if cached."""
        key = _key(rel, digest)
        raw = self._load().get(key)
        if raw is None:
            return None
        try:
            documents = marshal.loads(raw)
        except (EOFError, ValueError, TypeError):
            return None
        if not isinstance(documents, list):
            return None
        self.hits += 1
        return documents

    def put(self, rel: str, digest: str, documents: list[object]) -> None:
        """Remember the documents of a file that parsed (not those marshal cannot hold)."""
        if self.path is None:
            return
        try:
            raw = marshal.dumps(documents)
        except ValueError:  # e.g. a YAML timestamp: this file is parsed every time
            return
        key = _key(rel, digest)
        self._load()[key] = raw
        self._dirty = True

    def keep_only(self, keys: set[tuple[str, str]]) -> None:
        """Forget the entries of files that are gone or changed (at the next save)."""
        wanted = {_key(rel, digest) for rel, digest in keys}
        if self._entries is not None and set(self._entries) - wanted:
            self._entries = {k: v for k, v in self._entries.items() if k in wanted}
            self._dirty = True

    def save(self) -> bool:
        """Write the cache when it changed (atomically: beside, then renamed). Returns whether it wrote."""
        if self.path is None or not self._dirty or self._entries is None:
            return False
        payload = marshal.dumps(self._entries)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("policy cache %s: cannot write: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self._dirty = False
        return True
