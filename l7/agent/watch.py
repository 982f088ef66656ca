"""Content hashes of the agent's inputs and the status file the agent writes and others wait on.

The agent polls its inputs (policy directory, endpoints file) every ~0.5 s: a cheap ``stat`` signature
(paths, sizes, mtimes) first, the content hash only when that changed. ``lab apply`` and ``lab up`` compute
the same content hash of what they wrote and wait until every agent's status reports it applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l7.errors import L7GateError
from l7.policy.documents import SUFFIXES


def policy_files(path: Path) -> list[Path]:
    """The policy files of a file or directory (directories recursively, symlinks resolved), sorted."""
    path = path.resolve()
    if path.is_dir():
        return [path / rel for rel, _ in scan_policy_files(path)]
    return [path] if path.exists() else []


def scan_policy_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """(path relative to ``root``, stat) of every policy file under the directory ``root``, sorted by
    path components — one ``scandir`` per directory and one stat per file (thousands of files)."""
    out: list[tuple[tuple[str, ...], str, os.stat_result]] = []
    pending = [("", str(root))]
    while pending:
        rel_dir, directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_dir}{entry.name}"
            try:
                if entry.is_dir():
                    pending.append((rel + "/", entry.path))
                elif entry.name.endswith(SUFFIXES) and entry.is_file():
                    out.append((tuple(rel.split("/")), rel, entry.stat()))
            except OSError:
                continue
    out.sort(key=lambda row: row[0])
    return [(rel, st) for _, rel, st in out]


def signature(paths: list[Path]) -> tuple[object, ...]:
    """A cheap change signature: resolved targets, sizes and mtimes (ns)."""
    out: list[object] = []
    for path in paths:
        target = path.resolve()
        out.append(str(target))
        files = policy_files(target) if target.is_dir() else [target]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                out.append((str(f), None))
                continue
            out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


def content_hash(path: Path) -> str:
    """A hash of the content of a policy directory (relative path and sha256 of each policy file) or of
    one file. Unreadable files hash as missing (the loader reports them). :class:`l7.agent.inputs.
    PolicyFiles` computes the same from the digests it keeps (:func:`digest_hash`)."""
    target = path.resolve()
    if not target.is_dir():
        try:
            data = target.read_bytes()
        except OSError:
            return digest_hash([], False)
        return digest_hash([("", hashlib.sha256(data).hexdigest())], False)
    digests: list[tuple[str, str]] = []
    for rel, _ in scan_policy_files(target):
        try:
            digest = hashlib.sha256((target / rel).read_bytes()).hexdigest()
        except OSError:
            digest = "\1<unreadable>"
        digests.append((rel, digest))
    return digest_hash(digests, True)


def digest_hash(digests: list[tuple[str, str]], directory: bool) -> str:
    """The content hash from (relative path, sha256 hex) per file, in file order."""
    if not directory:
        return digests[0][1][:16] if digests else hashlib.sha256(b"\1<missing>").hexdigest()[:16]
    h = hashlib.sha256()
    for rel, digest in digests:
        h.update(rel.encode() + b"\0" + digest.encode() + b"\0")
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- status
def status_path(state_dir: Path, node: str) -> Path:
    return state_dir / f"agent-{node}.json"


def write_status(path: Path, status: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, indent=1, sort_keys=True))
    tmp.replace(path)


def pid_alive(pid: object) -> bool:
    """Whether ``pid`` (as read from a status file) is a live process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Expect:
    """What an agent must report: its pid (None: any), and the applied input hashes (None: any)."""

    status: Path
    pid: int | None = None
    policies_hash: str | None = None
    endpoints_hash: str | None = None


class WaitError(L7GateError):
    """The agents did not report the expected input applied (deadline, exit or policy errors)."""


def _satisfied(st: dict[str, Any] | None, e: Expect) -> bool:
    if st is None or not st.get("ready") or st.get("state") != "running":
        return False
    if e.pid is not None and st.get("pid") != e.pid:
        return False
    if e.policies_hash is not None and st.get("policies_hash") != e.policies_hash:
        return False
    return e.endpoints_hash is None or st.get("endpoints_hash") == e.endpoints_hash


def wait_status(
    expects: list[Expect],
    timeout: float,
    alive: Callable[[Expect], bool] = lambda _: True,
    interval: float = 0.02,
) -> float:
    """Poll the status files until every expectation holds; return the seconds it took.

    Raises :class:`WaitError` at the deadline, when ``alive`` says an agent died, or when an agent
    reports errors for the expected input (it will not apply it)."""
    start = time.monotonic()
    deadline = start + timeout
    pending = list(expects)
    while pending:
        for e in list(pending):
            st = read_status(e.status)
            if _satisfied(st, e):
                pending.remove(e)
                continue
            if not alive(e):
                raise WaitError(f"{e.status.name}: the agent exited")
            if st is not None and st.get("errors") and (e.pid is None or st.get("pid") == e.pid):
                seen = st.get("seen_policies_hash")
                if e.policies_hash is None or seen == e.policies_hash:
                    raise WaitError(f"{e.status.name}: " + "\n  ".join(str(x) for x in st["errors"]))
        if not pending:
            break
        if time.monotonic() > deadline:
            names = ", ".join(e.status.name for e in pending)
            raise WaitError(f"not applied after {timeout:.0f}s: {names}")
        time.sleep(interval)
    return time.monotonic() - start
