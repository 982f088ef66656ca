"""What every benchmark module shares: the figure record, timing helpers, subprocess helpers.

A benchmark module exposes ``NAME`` and ``run(opts) -> list[Figure]``; the runner records an exception
from ``run`` as that benchmark's error and goes on with the others.
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    """One measured number, compared with a baseline taken in the same run and with its target.

    ``ratio`` = value / baseline. ``target`` is a human-readable bound such as ``"<= 200 ms"``; ``met``
    is None when the figure has no target (informational).
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None
    best: float | None = None  # best of N, when the value is a median of N
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        return out


@dataclass
class Options:
    quick: bool = False  # shorter loops and durations (for trying the runner out)
    dns_workers: tuple[int, ...] = (1, 2)


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn`` (garbage collected before each call)."""
    out = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def best_median_ms(samples: list[float]) -> dict[str, float]:
    return {
        "best_ms": round(min(samples) * 1000, 3),
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "n": len(samples),
    }


def sh(*argv: str, check: bool = True, stdin: str | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return proc.stdout


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 5) -> None:
    """Stop one process we started, by its PID (terminate, then kill)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
