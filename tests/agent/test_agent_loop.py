"""The agent loop against a fake datapath: apply, re-apply on change only, keep the last good set."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from agent_helpers import SEED_002_ENDPOINTS, SEEDS, FakeDatapath

from l7.agent import watch
from l7.agent.node import Agent, AgentConfig
from l7.endpoints import EndpointsFile


def make_agent(tmp_path: Path) -> tuple[Agent, FakeDatapath, Path]:
    pol = tmp_path / "policies"
    pol.mkdir()
    shutil.copy(SEEDS / "002-allow-public-from-prod.yaml", pol)
    dp = FakeDatapath()

    def interfaces(_file: EndpointsFile) -> dict[str, str]:
        return {"default/service-pod": "lo"}

    cfg = AgentConfig(
        node="k8s-w1",
        policies=pol,
        endpoints=SEED_002_ENDPOINTS,
        state_dir=tmp_path / "state",
        datapath_name="test",
        interfaces=interfaces,
        poll_interval=0.01,
    )
    agent = Agent(cfg, open_datapath=lambda _name: dp)
    agent.start()
    return agent, dp, pol


def status(agent: Agent) -> dict[str, object]:
    data = json.loads(agent.cfg.status_file.read_text())
    assert isinstance(data, dict)
    return data


def test_apply_once_then_only_on_change(tmp_path: Path) -> None:
    agent, dp, pol = make_agent(tmp_path)
    assert agent.step()
    st = status(agent)
    assert st["ready"] and st["generation"] == 1 and st["policies_hash"] == watch.content_hash(pol)
    assert st["missing"]  # the other local pods have no interface here
    assert dp.pol and dp.eps[1].flags == 1  # lo: ifindex 1, ingress enforced
    writes = dp.writes
    assert not agent.step()
    assert dp.writes == writes
    (pol / "002-allow-public-from-prod.yaml").unlink()
    assert agent.step(force=False) or agent.step()
    assert not dp.pol and dp.eps[1].flags == 0
    assert (tmp_path / "state" / "identities-k8s-w1.json").exists()


def test_invalid_policy_keeps_last_good_set(tmp_path: Path, caplog: object) -> None:
    agent, dp, pol = make_agent(tmp_path)
    agent.step()
    good = status(agent)["policies_hash"]
    entries = {k: dict(v) for k, v in dp.pol.items()}
    (pol / "broken.yaml").write_text(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: b}\n"
        "spec:\n  endpointSelector: {}\n  ingress: [{toPortz: []}]\n"
    )
    agent.step()
    st = status(agent)
    assert st["policies_hash"] == good and st["seen_policies_hash"] != good
    errors = st["errors"]
    assert isinstance(errors, list) and any("spec.ingress[0].toPortz" in e for e in errors)
    assert dp.pol == entries  # enforcement unchanged
    (pol / "broken.yaml").unlink()
    agent.step()
    st = status(agent)
    assert not st["errors"] and st["policies_hash"] == good


def test_run_stops_on_event_without_destroying(tmp_path: Path) -> None:
    agent, dp, _ = make_agent(tmp_path)
    stop = threading.Event()
    done = threading.Thread(target=agent.run, args=(stop,))
    done.start()
    watch.wait_status([watch.Expect(agent.cfg.status_file)], timeout=10)
    stop.set()
    done.join(5)
    assert not done.is_alive()
    assert dp.closed and dp.pol  # closed, maps left as they are
    assert status(agent)["state"] == "stopped"
