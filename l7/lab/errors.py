"""The lab's exceptions: one root (:class:`LabError`), below l7gate's :class:`~l7.errors.L7GateError`."""

from __future__ import annotations

from dataclasses import dataclass

from l7.errors import L7GateError


class LabError(L7GateError):
    """A lab could not be built, inspected or taken down."""


@dataclass(frozen=True)
class TopologyIssue:
    """One problem in a topology file, at a field path such as ``pods[2].node``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<file>'}: {self.message}"


class TopologyError(LabError):
    """The topology file is not valid; :attr:`issues` holds every problem found, each with its field path."""

    def __init__(self, source: str, issues: list[TopologyIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{source}: invalid topology ({len(self.issues)} error(s)):\n{lines}")


class CommandError(LabError):
    """A command the lab ran to build or inspect a namespace failed."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(argv)} exited with {returncode}: {stderr.strip()}")


class NotFoundError(LabError):
    """A lab or pod that does not exist, or a name that cannot be one (the caller's input)."""
