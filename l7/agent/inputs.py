"""The agent's policy files, read incrementally: a file is parsed again only when its content changed.

::

    policy dir (or a symlink the lab / Kubernetes output swaps) ─► files ─► stat signature per file
        ─► unchanged signature: the digest from last time; else read + sha256
        ─► (relative path, digest) seen before: the same Policy objects; else parse that file
           (the YAML step from the state directory's cache when it has that digest: a restart
           validates the documents without parsing them again, see :mod:`l7.agent.policy_cache`)
        ─► all policies (duplicate keys across files refused), errors, content hash

Reused policies are the very objects of the last load, so the engine sees them unchanged by identity
(no model comparison). A policy's ``source`` is the path under the watched root (the link, not the
versioned directory it points to), so a symlink swap does not make unchanged policies look new.

The content hash is :func:`l7.agent.watch.content_hash` of the directory, computed from the digests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from l7.agent.policy_cache import PolicyCache
from l7.agent.watch import digest_hash, scan_policy_files
from l7.policy.documents import (
    LoadResult,
    Policy,
    PolicyError,
    PolicySourceError,
    load_documents,
    load_text,
    parse_documents,
)


@dataclass(frozen=True)
class Loaded:
    policies: tuple[Policy, ...]
    errors: tuple[PolicyError, ...]
    content_hash: str
    parsed: int  # files parsed by this load (the rest came from the last one)


class PolicyFiles:
    """See the module docstring."""

    def __init__(self, cache: Path | None = None) -> None:
        """``cache``: the file keeping the parsed YAML across restarts (None: none)."""
        self._stats: dict[str, tuple[tuple[int, int, int], str]] = {}  # file → (signature, digest)
        self._parsed: dict[tuple[str, str], LoadResult] = {}  # (relative path, digest) → result
        self.cache = PolicyCache(cache)

    def save_cache(self) -> bool:
        """Write the parsed YAML of the current files to the cache file when it changed."""
        return self.cache.save()

    def _parse(self, rel: str, digest: str, text: str, source: str) -> LoadResult:
        documents = self.cache.get(rel, digest)
        if documents is not None:
            return load_documents(documents, source)
        documents = parse_documents(text)
        if documents is None:  # a syntax error: load_text reports it document by document
            return load_text(text, source)
        self.cache.put(rel, digest, documents)
        return load_documents(documents, source)

    def load(self, root: Path) -> Loaded:
        """Load the policy files under ``root`` (a file or a directory, possibly a symlink)."""
        target = root.resolve()
        if not target.exists():
            raise PolicySourceError(f"no such file or directory: {root}")
        if target.is_dir():
            found = [(rel, f"{target}/{rel}", f"{root}/{rel}", st) for rel, st in scan_policy_files(target)]
        else:
            found = [(target.name, str(target), str(root), target.stat())]
        stats: dict[str, tuple[tuple[int, int, int], str]] = {}
        results: dict[tuple[str, str], LoadResult] = {}
        digests: list[tuple[str, str]] = []
        parsed = 0
        errors: list[PolicyError] = []
        for rel, path, source, st in found:
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._stats.get(path)
            text: str | None = None
            try:
                if cached is not None and cached[0] == sig:
                    digest = cached[1]
                else:
                    with open(path, "rb") as f:
                        data = f.read()
                    digest = hashlib.sha256(data).hexdigest()
                    text = data.decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(PolicyError(source, 0, "", f"cannot read: {exc}"))
                digests.append((rel, "\1<unreadable>"))
                continue
            stats[path] = (sig, digest)
            digests.append((rel, digest))
            result = self._parsed.get((rel, digest))
            if result is None:
                if text is None:
                    with open(path, encoding="utf-8") as f:
                        text = f.read()
                result = self._parse(rel, digest, text, source)
                parsed += 1
            results[(rel, digest)] = result
        self._stats, self._parsed = stats, results
        self.cache.keep_only(set(results))
        policies: list[Policy] = []
        seen: dict[str, Policy] = {}
        for result in results.values():
            errors += result.errors
            for policy in result.policies:
                previous = seen.get(policy.key)
                if previous is not None:
                    where = policy.name if policy.namespace is None else f"{policy.namespace}/{policy.name}"
                    label = f"{policy.kind} {where}"
                    errors.append(
                        PolicyError(
                            policy.source,
                            policy.index,
                            "metadata.name",
                            f"duplicate policy: {label} is already defined in "
                            f"{previous.source}[{previous.index}]",
                            label,
                        )
                    )
                    continue
                seen[policy.key] = policy
                policies.append(policy)
        return Loaded(tuple(policies), tuple(errors), digest_hash(digests, target.is_dir()), parsed)
