"""Shared pieces of the Kubernetes tests: the fake API server with CRD schema validation, the real
``kubernetes`` client pointed at it, a controller, and the real agent loop (fake datapath) beside it."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes

from l7.agent.node import Agent, AgentConfig
from l7.k8s import crd
from l7.k8s.controller import Controller, ControllerConfig
from l7.kube import KubeClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_helpers import FakeDatapath
from fakeapi import FakeAPIServer

REPO = Path(__file__).resolve().parents[2]


def crd_validators() -> dict[str, Callable[[dict[str, Any]], None]]:
    """Create/update of our kinds are checked against the generated CRD schema, like an API server."""
    out: dict[str, Callable[[dict[str, Any]], None]] = {}
    for names in crd.KINDS:
        validator = jsonschema.Draft7Validator(crd.json_schema(crd.object_schema()))

        def check(obj: dict[str, Any], v: jsonschema.Draft7Validator = validator) -> None:
            errors = sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path))
            if errors:
                raise ValueError("; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors))

        out[names.plural] = check
    return out


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def client_for(server: FakeAPIServer) -> KubeClient:
    cfg = kubernetes.client.Configuration()
    cfg.host = server.url
    return KubeClient(cfg)


def controller_config(directory: Path, node: str, **kw: Any) -> ControllerConfig:
    defaults: dict[str, Any] = {
        "poll": 0.05,
        "debounce": 0.02,
        "status_interval": 0.2,
        "watch_timeout": 5,
        "backoff": (0.05, 0.5),
    }
    defaults["agent_status"] = directory / f"agent-{node}.json"
    defaults.update(kw)
    return ControllerConfig(node=node, directory=directory, **defaults)


@contextmanager
def running_controller(server: FakeAPIServer, cfg: ControllerConfig) -> Iterator[Controller]:
    client = client_for(server)
    controller = Controller(client, cfg)
    controller.start()
    try:
        assert controller.wait_written(10), "the controller never wrote its inputs"
        yield controller
    finally:
        controller.stop()
        client.close()


@contextmanager
def running_agent(cfg: ControllerConfig, services: list[Any] | None = None) -> Iterator[Agent]:
    """The real agent loop (files mode on the controller's output) on a fake datapath, in a thread
    (with ``services``: those node services, else none)."""
    agent = Agent(
        AgentConfig(
            node=cfg.node,
            policies=cfg.policies,
            endpoints=cfg.endpoints,
            state_dir=cfg.directory,
            datapath_name=f"kx-{cfg.node}",
            interfaces=lambda _file: {},
            poll_interval=0.05,
        ),
        open_datapath=lambda _name: FakeDatapath(),
        services=list(services or []),
    )
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        stop.set()
        thread.join(10)


def policy_files(cfg: ControllerConfig) -> dict[str, str]:
    root = cfg.policies.resolve()
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.yaml"))}


def endpoints(cfg: ControllerConfig) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cfg.endpoints.read_text())
    return data


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def l7np(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "l7gate.io/v1alpha1",
        "kind": "L7NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def pod(name: str, namespace: str, ip: str, node: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": "default", "containers": [{"name": "c"}], **spec},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }
