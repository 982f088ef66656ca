"""Field paths as users read them: ``spec.egress[0].toPorts[0].rules.http[1].path``.

Names are the document's (camelCase) spelling, list positions are ``[i]`` and map keys (label keys,
which may contain dots) are ``[key]`` like Kubernetes' ``field.Path``.
"""

from __future__ import annotations

from collections.abc import Iterable

# Members of the loc tuples pydantic adds for unions, tagged unions and validators: not document fields.
_UNION_TAGS = frozenset({"int", "str", "bool", "float", "none", "list", "dict", "tuple"})
# Fields whose children are map keys, not field names.
_MAPS = frozenset({"matchLabels", "labels", "annotations"})


def field(path: str, name: str) -> str:
    """``path`` followed by the field ``name``."""
    return f"{path}.{name}" if path else name


def index(path: str, i: int) -> str:
    """``path`` followed by the list position ``i``."""
    return f"{path}[{i}]"


def key(path: str, k: str) -> str:
    """``path`` followed by the map key ``k``."""
    return f"{path}[{k}]"


def from_loc(prefix: str, loc: Iterable[int | str]) -> str:
    """Format a pydantic error location (``loc_by_alias``) below ``prefix``."""
    path = prefix
    parent: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path = index(path, part)
        elif parent in _MAPS:
            path = key(path, part)
        elif part in _UNION_TAGS or "[" in part or part.startswith("function-"):
            continue
        else:
            path = field(path, part)
        parent = part
    return path
