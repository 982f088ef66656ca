"""``l7gate demo``: the seed documents' scenarios, played for real in a lab.

Data flow::

    scenarios.yaml ──► scenarios (pydantic, field paths) ──► runner ──► Lab.up(deploy/lab/demo.yaml)
                                                               │  per phase: lab apply (seed policies)
                                                               │  per step: curl/dig/ping in the pod
                                                               ▼
                                 observe.classify (exit status + output) ──► observe.check ──► StepResult
"""

from l7.demo.observe import Observation, check, classify
from l7.demo.runner import DemoError, DemoReport, StepResult, run_demo
from l7.demo.scenarios import (
    DEFAULT_SCENARIOS,
    Expect,
    ScenarioError,
    Scenarios,
    load_scenarios,
    parse_scenarios,
)

__all__ = [
    "DEFAULT_SCENARIOS",
    "DemoError",
    "DemoReport",
    "Expect",
    "Observation",
    "ScenarioError",
    "Scenarios",
    "StepResult",
    "check",
    "classify",
    "load_scenarios",
    "parse_scenarios",
    "run_demo",
]
