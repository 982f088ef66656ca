"""The Grafana dashboard and the PodMonitor component, without a cluster: every metric the dashboard
queries is documented (the lab test checks that it is served), every query is valid PromQL for
``promtool check rules``, the dashboard has the panels the issue asks for, and ``kubectl kustomize``
renders deploy/ with the PodMonitor component into a PodMonitor that selects the agent pods' ``metrics``
port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.metrics.exposition import (
    DASHBOARDS,
    REPO,
    dashboard_queries,
    documented,
    plain_promql,
    promtool,
    queried_metrics,
)

TOPICS = (
    "Flows by verdict",
    "Drops by reason",
    "DNS proxy latency",
    "xDS convergence",
    "Policy apply time",
    "Map occupancy",
)


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["l7gate-dashboard.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_metrics_are_documented(path: Path) -> None:
    docs = documented()
    histograms = {name for name, kind in docs.items() if kind == "histogram"}
    queried = queried_metrics(dashboard_queries(path), histograms)
    assert queried, "the dashboard queries no l7gate metric"
    assert queried - set(docs) == set(), "queried but not in docs/operations.md"
    # and each histogram is queried as one (its buckets), never as a plain gauge
    for expr in dashboard_queries(path):
        for name in histograms:
            assert f"{name}{{" not in expr and f"{name})" not in expr, expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_the_panels(path: Path) -> None:
    data = json.loads(path.read_text())
    titles = {panel["title"] for panel in data["panels"]}
    assert set(TOPICS) <= titles
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_are_promql(path: Path, tmp_path: Path) -> None:
    queries = [q for q in dashboard_queries(path) if not q.startswith("label_values(")]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"l7gate:query{i}", "expr": plain_promql(q)} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    file = tmp_path / "rules.yaml"
    file.write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [promtool(), "check", "rules", str(file)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(queries)} rules found" in check.stdout


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, (
        "kubectl not found: it is on the machine image (kubectl 1.32 with kustomize); install it to render"
    )
    return path


def test_podmonitor_component_renders(tmp_path: Path) -> None:
    deploy = os.path.relpath(REPO / "deploy", tmp_path)  # kustomize refuses absolute roots
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [deploy],
                "components": [f"{deploy}/components/podmonitor"],
            }
        )
    )
    proc = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
    (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"]
    (agent,) = [o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "l7gate-agent"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == agent["metadata"]["namespace"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [agent["metadata"]["namespace"]]}
    pod_labels = agent["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    ports = {
        p["name"]: p["containerPort"]
        for c in agent["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", ())
    }
    assert ports.get("metrics") == 9962, f"the agent DaemonSet declares no port named metrics: {ports}"
    # the component changes nothing else: deploy/ alone renders the same objects minus the PodMonitor
    alone = subprocess.run(
        [kubectl(), "kustomize", str(REPO / "deploy")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert alone.returncode == 0, alone.stderr
    assert [o for o in yaml.safe_load_all(alone.stdout) if o] == [
        o for o in objects if o["kind"] != "PodMonitor"
    ]
