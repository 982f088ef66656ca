"""The demo's scenario file: which policies to apply, then which commands to run in which pods and what
each must show. Pure data, validated with field paths (all problems at once)::

    topology: ../../deploy/lab/demo.yaml        # relative to the scenario file
    policies: ../../deploy/examples/seeds        # where ``phases[].policies`` are looked up
    extra_policies: ../../deploy/examples/beyond-seeds   # ... for phases with ``extra: true``
    phases:
      - name: "002 L7: GET /public from env=prod"
        source: "seed 002 line 796"
        note: free text shown under the table
        policies: [002-allow-public-from-prod.yaml]   # the whole set for this phase ([] = none)
        steps:
          - pod: client-prod                          # or node: k8s-ctr (runs in the node namespace)
            run: curl -si -m 2 service-svc/private
            expect: {outcome: http, status: 403, body: Access denied}
      - name: "beyond the seeds: TLS interception"
        extra: true        # not from the seed posts: marked in the table, counted apart in the summary
        policies: [tls-interception.yaml]
        steps:
          - pod: inspector
            run: curl -si -m 3 --cacert {cert:lab-ca} https://api.example.com/public
            expect: {outcome: http, status: 200, body: Hello from example-api}

In ``run``, ``{ip:NAME}`` is the first IPv4 address of a pod or world host, ``{node:NAME}`` the
uplink IPv4 address of a node and ``{cert:NAME}`` the path of a lab certificate (``certs/NAME.crt`` in
the lab's state: a TLS server's self-signed certificate, or ``lab-ca``, the CA of the topology's
``issue`` secrets).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from l7.errors import L7GateError

Outcome = Literal[
    "http", "timeout", "unresolved", "refused", "handshake", "untrusted", "dns", "reply", "exit"
]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
TEMPLATE = re.compile(r"\{(ip|node|cert):([A-Za-z0-9._/-]+)\}")


class ScenarioError(L7GateError):
    """The scenario file is invalid; ``problems`` holds every problem with its field path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Model):
    """What a step must show. Only the fields given are checked (besides ``outcome``)."""

    outcome: Outcome
    status: int | None = Field(default=None, ge=100, le=599)  # http
    body: str | None = None  # http: a substring of the body
    rcode: str | None = None  # dns: NOERROR, REFUSED, NXDOMAIN, ...
    answer: bool | None = None  # dns: at least one A/AAAA in the answer (True) or none (False)
    exit: int | None = None  # exit: the command's exit status

    @model_validator(mode="after")
    def _fields_fit(self) -> Expect:
        allowed = {
            "http": {"status", "body"},
            "dns": {"rcode", "answer"},
            "exit": {"exit"},
        }.get(self.outcome, set())
        given = {k for k in ("status", "body", "rcode", "answer", "exit") if getattr(self, k) is not None}
        extra = given - allowed
        if extra:
            raise ValueError(f"outcome {self.outcome!r} takes no {', '.join(sorted(extra))}")
        if self.outcome == "exit" and self.exit is None:
            raise ValueError("outcome 'exit' needs 'exit'")
        return self

    def describe(self) -> str:
        if self.outcome == "http":
            parts = [str(self.status) if self.status is not None else "HTTP"]
            if self.body is not None:
                parts.append(repr(self.body))
            return " ".join(parts)
        if self.outcome == "dns":
            parts = [self.rcode or "answer"]
            if self.answer is not None:
                parts.append("with IPs" if self.answer else "no IPs")
            return " ".join(parts)
        if self.outcome == "exit":
            return f"exit {self.exit}"
        return {
            "timeout": "timed out",
            "unresolved": "name not resolved",
            "refused": "connection refused",
            "handshake": "TLS handshake failed",
            "untrusted": "certificate not trusted",
            "reply": "ping reply",
        }[self.outcome]


class Step(_Model):
    pod: str | None = None
    node: str | None = None
    run: str = Field(min_length=1)
    expect: Expect

    @model_validator(mode="after")
    def _one_place(self) -> Step:
        if (self.pod is None) == (self.node is None):
            raise ValueError("give exactly one of 'pod' and 'node'")
        try:
            argv = shlex.split(self.run)
        except ValueError as exc:
            raise ValueError(f"run: {exc}") from None
        if not argv:
            raise ValueError("run: empty command")
        return self

    @property
    def where(self) -> str:
        return self.pod if self.pod is not None else f"node {self.node}"

    def argv(self, ips: dict[str, str]) -> list[str]:
        """The command line with its ``{ip:NAME}``/``{node:NAME}``/``{cert:NAME}`` templates filled in
        from ``ips`` (keys ``ip:NAME``, ``node:NAME`` and ``cert:NAME``)."""

        def fill(m: re.Match[str]) -> str:
            key = f"{m.group(1)}:{m.group(2)}"
            if key not in ips:
                raise KeyError(key)
            return ips[key]

        return [TEMPLATE.sub(fill, part) for part in shlex.split(self.run)]


class Phase(_Model):
    name: str = Field(min_length=1)
    source: str = ""
    note: str = ""
    extra: bool = False  # not from the seed posts: policies from ``extra_policies``, marked as such
    sequential: bool = False  # run the steps in order (a step needs an earlier one's DNS answer)
    policies: list[str] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)


class ScenarioFile(_Model):
    topology: str
    policies: str
    extra_policies: str | None = None
    phases: list[Phase] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ScenarioFile:
        names = [p.name for p in self.phases]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate phase names: {', '.join(dup)}")
        if self.extra_policies is None and any(p.extra and p.policies for p in self.phases):
            raise ValueError("phases with 'extra: true' and policies need 'extra_policies'")
        return self


class Scenarios:
    """A loaded scenario file with its paths resolved."""

    def __init__(self, model: ScenarioFile, base: Path) -> None:
        self.model = model
        self.topology = (base / model.topology).resolve()
        self.policy_dir = (base / model.policies).resolve()
        self.extra_dir = (base / model.extra_policies).resolve() if model.extra_policies else None

    @property
    def phases(self) -> list[Phase]:
        return self.model.phases

    def policy_paths(self, phase: Phase) -> list[Path]:
        directory = self.extra_dir if phase.extra and self.extra_dir is not None else self.policy_dir
        return [directory / name for name in phase.policies]

    def select(self, pattern: str | None) -> list[tuple[Phase, list[Step]]]:
        """The phases and steps whose ``phase name`` or ``pod/node + command`` match ``pattern``
        (a case-insensitive substring; None = everything). Phases without a match are left out."""
        out: list[tuple[Phase, list[Step]]] = []
        for phase in self.phases:
            steps = [s for s in phase.steps if matches(pattern, phase, s)]
            if steps:
                out.append((phase, steps))
        return out


def matches(pattern: str | None, phase: Phase, step: Step) -> bool:
    if not pattern:
        return True
    p = pattern.lower()
    return p in phase.name.lower() or p in f"{step.where} {step.run}".lower()


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in OUTCOMES or part.startswith("function-"):
            continue
        else:
            out += f".{part}" if out else part
    return out


def parse_scenarios(data: object, source: str, base: Path) -> Scenarios:
    try:
        model = ScenarioFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_loc(e['loc']) or '<top>'}: {e['msg']}" for e in exc.errors()]
        raise ScenarioError(source, problems) from None
    scenarios = Scenarios(model, base)
    problems = []
    if not scenarios.topology.is_file():
        problems.append(f"topology: no such file: {scenarios.topology}")
    for i, phase in enumerate(model.phases):
        for j, path in enumerate(scenarios.policy_paths(phase)):
            if not path.exists():
                problems.append(f"phases[{i}].policies[{j}]: no such file: {path}")
    if problems:
        raise ScenarioError(source, problems)
    return scenarios


def load_scenarios(path: str | Path) -> Scenarios:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(str(path), [f"cannot read: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(str(path), [f"invalid YAML: {exc}"]) from None
    return parse_scenarios(data, str(path), path.resolve().parent)


DEFAULT_SCENARIOS = Path(__file__).resolve().parent / "scenarios.yaml"
