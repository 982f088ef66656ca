"""The lab's state file, ``/run/l7gate/labs/<lab>/state.json``: everything a lab created, so ``down`` can
remove exactly that — even after a crashed ``up``. The plan is not stored: it is recomputed from the stored
topology, name and index (a pure function).

The namespaces and ``/etc/netns`` entries are recorded *before* they are created, each process right
after it starts. A lab's index (its address block) is allocated under a lock over all labs' states.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from l7.lab.addressing import MAX_LABS, Plan, plan
from l7.lab.errors import LabError, NotFoundError
from l7.lab.procs import ProcRecord
from l7.lab.topology import Topology

LABS_DIR = Path(os.environ.get("L7GATE_LABS_DIR", "/run/l7gate/labs"))
DEFAULT_LAB = "l7gate"
_LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")


def check_name(name: str) -> str:
    if not _LAB_NAME.fullmatch(name):
        raise NotFoundError(
            f"lab name {name!r}: 1-24 lower-case letters, digits or '-', not starting with '-'"
        )
    return name


class LabState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    index: int
    phase: Literal["building", "ready", "failed"] = "building"
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    topology_source: str
    topology: dict[str, Any]
    policies: str | None = None
    netns: list[str] = Field(default_factory=list)
    etc_netns: list[str] = Field(default_factory=list)
    processes: list[ProcRecord] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    up_seconds: float | None = None

    @property
    def directory(self) -> Path:
        return lab_dir(self.name)

    def topology_model(self) -> Topology:
        return Topology.model_validate(self.topology)

    def plan(self) -> Plan:
        return plan(self.topology_model(), self.name, self.index)

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)


def lab_dir(name: str) -> Path:
    return LABS_DIR / name


def load_state(name: str) -> LabState | None:
    path = lab_dir(name) / "state.json"
    try:
        return LabState.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValidationError, json.JSONDecodeError, OSError) as exc:
        raise LabError(f"{path}: unreadable lab state: {exc}") from exc


def list_labs() -> list[str]:
    if not LABS_DIR.exists():
        return []
    return sorted(p.parent.name for p in LABS_DIR.glob("*/state.json"))


@contextlib.contextmanager
def labs_lock() -> Iterator[None]:
    LABS_DIR.mkdir(parents=True, exist_ok=True)
    with open(LABS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def free_index() -> int:
    """The lowest lab index no recorded lab uses (call under :func:`labs_lock`)."""
    used = set()
    for name in list_labs():
        with contextlib.suppress(LabError):
            st = load_state(name)
            if st is not None:
                used.add(st.index)
    for i in range(MAX_LABS):
        if i not in used:
            return i
    raise LabError(f"all {MAX_LABS} lab address blocks are in use")
