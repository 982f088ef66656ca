"""What the metrics tests compare: the metric table of docs/operations.md, a served /metrics page, the
metrics the Grafana dashboard queries, and ``promtool``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
TYPES = ("counter", "gauge", "histogram")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
NAME = re.compile(r"`(l7gate_[a-z0-9_]+)`")
QUERIED = re.compile(r"\b(l7gate_[a-z0-9_]+)")
#: Grafana's variables, replaced to make a dashboard query plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*"}


def documented(doc: Path = DOC) -> dict[str, str]:
    """Metric name (as exposed: counters with ``_total``) → type, from the table of the Metrics section:
    rows ``| `a`, `b` | type[, type] | labels | meaning |`` (one type for all, or one per name)."""
    section = doc.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    out: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2:
            continue
        names = NAME.findall(cells[0])
        types = [t.strip() for t in cells[1].split(",")]
        if not names:
            continue
        if len(types) == 1:
            types *= len(names)
        assert len(types) == len(names) and set(types) <= set(TYPES), f"docs/operations.md: {line}"
        out.update(zip(names, types, strict=True))
    return out


def served(text: str) -> dict[str, str]:
    """Family name (as exposed) → type, from a /metrics page."""
    return {
        f.name + ("_total" if f.type == "counter" else ""): f.type
        for f in text_string_to_metric_families(text)
    }


def dashboard_queries(path: Path) -> list[str]:
    """Every PromQL expression of a Grafana dashboard (panels' targets and query variables)."""
    data = json.loads(path.read_text())
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return out


def queried_metrics(expressions: list[str], histograms: set[str]) -> set[str]:
    """The metric names the expressions use (a histogram's ``_bucket``/``_sum``/``_count`` series count
    as the histogram)."""
    out: set[str] = set()
    for expr in expressions:
        for name in QUERIED.findall(expr):
            base = next((name.removesuffix(s) for s in HISTOGRAM_SERIES if name.endswith(s)), name)
            out.add(base if base in histograms else name)
    return out


def plain_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: Debian's prometheus package ships it (bash deploy/setup.sh)"
    return path


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
