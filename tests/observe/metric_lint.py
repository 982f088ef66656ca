"""Prometheus naming conventions for l7gate's metrics (https://prometheus.io/docs/practices/naming/):
the ``l7gate_`` prefix, snake_case, ``_total`` on counters and only there, base units (seconds, bytes,
not milliseconds), no unit-less ``_count``/``_sum``/``_bucket`` suffixes outside histograms, and a
HELP text for every family."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

NAME = re.compile(r"^l7gate_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
NON_BASE_UNITS = (
    "_milliseconds",
    "_ms",
    "_microseconds",
    "_us",
    "_nanoseconds",
    "_ns",
    "_minutes",
    "_hours",
    "_kilobytes",
    "_megabytes",
    "_percent",
)
RESERVED = ("_count", "_sum", "_bucket", "_created")


def lint_name(name: str, kind: str, doc: str) -> list[str]:
    """Problems of one metric family (``name`` as exposed, with ``_total`` for counters)."""
    problems = []
    if not NAME.fullmatch(name):
        problems.append(f"{name}: not l7gate_ + snake_case")
    if kind == "counter" and not name.endswith("_total"):
        problems.append(f"{name}: a counter must end in _total")
    if kind != "counter" and name.endswith("_total"):
        problems.append(f"{name}: only counters end in _total")
    if any(unit in name for unit in NON_BASE_UNITS):
        problems.append(f"{name}: use base units (seconds, bytes, ratios)")
    if kind not in ("histogram", "summary") and name.endswith(RESERVED):
        problems.append(f"{name}: {RESERVED} suffixes are for histograms and summaries")
    if not doc.strip():
        problems.append(f"{name}: no HELP text")
    return problems


def lint_exposition(text: str) -> list[str]:
    """Lint every family of a /metrics page (the text exposition format)."""
    problems: list[str] = []
    for family in text_string_to_metric_families(text):
        exposed = family.name + ("_total" if family.type == "counter" else "")
        problems += lint_name(exposed, family.type, family.documentation)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            for label in sample.labels:
                if not re.fullmatch(r"[a-z][a-z0-9_]*", label):
                    problems.append(f"{sample.name}: label {label!r} is not snake_case")
    return problems
