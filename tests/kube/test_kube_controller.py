"""The controller with the real ``kubernetes`` client against the in-process API server (fakeapi.py),
and the real agent loop (fake datapath) consuming its output: policies and pods → files → agent →
status conditions back on the objects. Watch interruptions and 410 must not lose or duplicate changes."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakeapi import FakeAPIServer
from kube_helpers import (
    condition,
    controller_config,
    endpoints,
    l7np,
    pod,
    policy_files,
    running_agent,
    running_controller,
    wait_for,
)

from l7.agent.secrets import load_secrets

ALLOW_WEB = {
    "endpointSelector": {"matchLabels": {"app": "web"}},
    "ingress": [
        {
            "fromEndpoints": [{"matchLabels": {"app": "client"}}],
            "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
        }
    ],
}
# Accepted by the CRD schema (right shape), rejected by l7gate's validation: three errors, with paths.
INVALID = {
    "endpointSelector": {"matchLabels": {"app": "web"}},
    "egress": [
        {"toCIDR": ["10.0.0.0/33"]},
        {"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{"path": "("}]}}]},
    ],
}


def seed_cluster(server: FakeAPIServer) -> None:
    server.create("namespaces", {"metadata": {"name": "shop", "labels": {"team": "a"}}})
    server.create(
        "nodes",
        {
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]},
        },
    )
    server.create("pods", pod("web", "shop", "10.1.0.10", "n1", {"app": "web"}))


def test_policy_create_update_delete_and_status(server: FakeAPIServer, tmp_path: Path) -> None:
    seed_cluster(server)
    cfg = controller_config(tmp_path, "n1")
    with running_controller(server, cfg) as ctl, running_agent(cfg):
        server.create("l7networkpolicies", l7np("allow-web", "shop", ALLOW_WEB))
        path = "L7NetworkPolicy/shop/allow-web.yaml"
        files = wait_for("the policy file", lambda: policy_files(cfg).get(path))
        assert yaml.safe_load(files)["spec"] == ALLOW_WEB

        def enforced(generation: int) -> dict[str, Any] | None:
            obj = server.get("l7networkpolicies", "allow-web", "shop")
            c = condition(obj, "Enforced")
            ok = c and c["status"] == "True" and c["observedGeneration"] == generation
            return obj if ok else None

        obj = wait_for("Enforced=True", lambda: enforced(1))
        assert condition(obj, "Valid")["status"] == "True"  # type: ignore[index]
        assert (obj["status"]["enforcingNodes"], obj["status"]["failingNodes"]) == (1, 0)
        assert obj["status"]["failures"] == [] and "nodes" not in obj["status"]

        # update: generation 2 → new file content, then Enforced for generation 2
        updated = dict(obj, spec={**ALLOW_WEB, "ingress": [{"fromEndpoints": [{}]}]})
        server.update("l7networkpolicies", updated)
        wait_for("the updated file", lambda: "fromEndpoints:\n    - {}" in policy_files(cfg).get(path, ""))
        obj = wait_for("Enforced=True for generation 2", lambda: enforced(2))
        assert obj["status"]["observedGeneration"] == 2

        # no hot loop: once converged, nothing more is written
        before = len(server.patches)
        time.sleep(0.6)  # under test: nothing is written for a while (an absence cannot be polled for)
        assert len(server.patches) == before, server.patches[before:]

        server.delete("l7networkpolicies", "allow-web", "shop")
        wait_for("the file gone", lambda: path not in policy_files(cfg))
        assert ctl.stats.patch_errors == 0


def test_invalid_policy_has_field_paths_and_valid_ones_stay_enforced(
    server: FakeAPIServer, tmp_path: Path
) -> None:
    seed_cluster(server)
    cfg = controller_config(tmp_path, "n1")
    with running_controller(server, cfg), running_agent(cfg) as agent:
        server.create("l7networkpolicies", l7np("good", "shop", ALLOW_WEB))
        server.create("l7networkpolicies", l7np("bad", "shop", INVALID))

        def valid_false() -> dict[str, Any] | None:
            obj = server.get("l7networkpolicies", "bad", "shop")
            c = condition(obj, "Valid")
            return obj if c and c["status"] == "False" else None

        bad = wait_for("Valid=False", valid_false)
        paths = {e["path"] for e in bad["status"]["errors"]}
        assert {"spec.egress[0].toCIDR[0]", "spec.egress[1].toPorts[0].rules.http[0].path"} <= paths, paths
        message = condition(bad, "Valid")["message"]  # type: ignore[index]
        assert "spec.egress[0].toCIDR[0]" in message and "rules.http[0].path" in message, message
        assert condition(bad, "Enforced")["status"] == "False"  # type: ignore[index]

        good = wait_for(
            "the valid policy enforced",
            lambda: (
                (condition(server.get("l7networkpolicies", "good", "shop"), "Enforced") or {}).get("status")
                == "True"
            ),
        )
        assert good
        assert list(policy_files(cfg)) == ["L7NetworkPolicy/shop/good.yaml"]
        assert agent.errors == []  # the agent never saw the invalid one

        # fixing it: the same object becomes valid and enforced, with generation 2
        fixed = server.get("l7networkpolicies", "bad", "shop")
        fixed["spec"] = ALLOW_WEB
        server.update("l7networkpolicies", fixed)
        wait_for(
            "the fixed policy enforced",
            lambda: (
                (condition(server.get("l7networkpolicies", "bad", "shop"), "Enforced") or {}).get(
                    "observedGeneration"
                )
                == 2
                and condition(server.get("l7networkpolicies", "bad", "shop"), "Enforced")["status"] == "True"
            ),  # type: ignore[index]
        )
        assert server.get("l7networkpolicies", "bad", "shop")["status"]["errors"] == []


def test_schema_rejects_wrong_shapes(server: FakeAPIServer) -> None:
    """What the CRD schema rejects never reaches the controller (kubectl gets the error)."""
    with pytest.raises(ValueError, match="egress"):
        server.create("l7networkpolicies", l7np("x", "shop", {"egress": {"toCIDR": "not-a-list"}}))


def test_pods_namespaces_nodes_to_endpoints(server: FakeAPIServer, tmp_path: Path) -> None:
    seed_cluster(server)
    cfg = controller_config(tmp_path, "n1")
    with running_controller(server, cfg), running_agent(cfg) as agent:
        data = endpoints(cfg)
        assert [e["name"] for e in data["endpoints"]] == ["web"]
        assert data["namespaces"]["shop"]["labels"] == {"team": "a"}
        assert data["nodes"] == [
            {"name": "n1", "ips": ["192.168.50.1"], "labels": {"kubernetes.io/hostname": "n1"}}
        ]
        server.create(
            "pods",
            pod(
                "client",
                "shop",
                "10.1.0.11",
                "n2",
                {"app": "client"},
                serviceAccountName="buyer",
                containers=[{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}],
            ),
        )
        server.create("pods", pod("hostnet", "shop", "192.168.50.1", "n1", {"app": "x"}, hostNetwork=True))
        entry = wait_for(
            "the client endpoint",
            lambda: next((e for e in endpoints(cfg)["endpoints"] if e["name"] == "client"), None),
        )
        assert entry == {
            "name": "client",
            "namespace": "shop",
            "labels": {"app": "client"},
            "ips": ["10.1.0.11"],
            "node": "n2",
            "serviceAccount": "buyer",
            "ports": {"http": 8080},
        }
        assert "hostnet" not in {e["name"] for e in endpoints(cfg)["endpoints"]}
        # relabel: the agent re-resolves with the new labels
        relabeled = server.get("pods", "client", "shop")
        relabeled["metadata"]["labels"] = {"app": "client", "tier": "gold"}
        server.update("pods", relabeled)
        wait_for(
            "new labels",
            lambda: {"app": "client", "tier": "gold"} in [e["labels"] for e in endpoints(cfg)["endpoints"]],
        )
        server.delete("pods", "client", "shop")
        wait_for("the pod gone", lambda: [e["name"] for e in endpoints(cfg)["endpoints"]] == ["web"])
        wait_for("the agent applied it", lambda: agent.ready and not agent.errors)


def test_watch_drops_and_410_lose_and_duplicate_nothing(server: FakeAPIServer, tmp_path: Path) -> None:
    seed_cluster(server)
    cfg = controller_config(tmp_path, "n1")
    with running_controller(server, cfg) as ctl:
        server.create("l7networkpolicies", l7np("p0", "shop", ALLOW_WEB))
        wait_for("p0", lambda: "L7NetworkPolicy/shop/p0.yaml" in policy_files(cfg))
        # 1. connections dropped mid-stream, changes in between: the watch resumes from its version
        for i in range(1, 4):
            wait_for("every informer watching", lambda: len(server.watch_sockets) == len(ctl.informers))
            assert server.drop_watches() == len(ctl.informers)
            server.create("l7networkpolicies", l7np(f"p{i}", "shop", ALLOW_WEB))
            server.create("pods", pod(f"w{i}", "shop", f"10.1.0.{20 + i}", "n1", {"app": "web"}))
        server.delete("l7networkpolicies", "p0", "shop")
        want = {f"L7NetworkPolicy/shop/p{i}.yaml" for i in range(1, 4)}
        wait_for("p1-p3 without p0", lambda: set(policy_files(cfg)) == want)
        wait_for("w1-w3", lambda: len(endpoints(cfg)["endpoints"]) == 4)

        # 2. history compacted while changes happen with every watch cut: the next watch gets 410,
        #    the informers list again, and a deletion made in the gap is seen too
        lists_before = sum(i.stats.lists for i in ctl.informers.values())
        server.drop_watches()
        server.delete("l7networkpolicies", "p1", "shop")
        server.create("l7networkpolicies", l7np("p4", "shop", ALLOW_WEB))
        server.delete("pods", "w1", "shop")
        server.compact()
        server.drop_watches()
        want = {f"L7NetworkPolicy/shop/p{i}.yaml" for i in (2, 3, 4)}
        wait_for("p2-p4", lambda: set(policy_files(cfg)) == want)
        wait_for(
            "w2, w3", lambda: sorted(e["name"] for e in endpoints(cfg)["endpoints"]) == ["w2", "w3", "web"]
        )
        wait_for("a relist after 410", lambda: sum(i.stats.gone for i in ctl.informers.values()) >= 1)
        assert sum(i.stats.lists for i in ctl.informers.values()) > lists_before
        assert server.counts["gone"] >= 1 and server.counts["dropped"] >= 4

        # 3. bookmarks move the resourceVersion on while nothing changes for a resource
        wait_for("bookmarks", lambda: sum(i.stats.bookmarks for i in ctl.informers.values()) >= 3)
        assert all(q.get("allowWatchBookmarks") == ["true"] for m, _, q in server.requests if m == "WATCH")

        # no duplicates: one file per policy, one endpoint per pod, each exactly as in the server
        for i in (2, 3, 4):
            text = policy_files(cfg)[f"L7NetworkPolicy/shop/p{i}.yaml"]
            assert yaml.safe_load(text)["metadata"] == {"name": f"p{i}", "namespace": "shop"}
        names = [e["name"] for e in endpoints(cfg)["endpoints"]]
        assert len(names) == len(set(names))


def test_cilium_policies_with_the_flag_and_no_status_on_them(server: FakeAPIServer, tmp_path: Path) -> None:
    seed_cluster(server)
    cnp = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "legacy", "namespace": "shop"},
        "spec": ALLOW_WEB,
    }
    server.create("ciliumnetworkpolicies", cnp)
    off = controller_config(tmp_path / "off", "n1")
    with running_controller(server, off):
        assert policy_files(off) == {}
    on = controller_config(tmp_path / "on", "n1", cilium=True)
    with running_controller(server, on), running_agent(on) as agent:
        wait_for("the CNP file", lambda: "CiliumNetworkPolicy/shop/legacy.yaml" in policy_files(on))
        wait_for("applied", lambda: agent.ready)
        time.sleep(0.3)  # under test: no status patch follows (an absence cannot be polled for)
        assert not [p for p in server.patches if p[0] == "ciliumnetworkpolicies"]
        assert "status" not in server.get("ciliumnetworkpolicies", "legacy", "shop")


def test_two_nodes_each_report_enforcement(server: FakeAPIServer, tmp_path: Path) -> None:
    """Two nodes' controllers each count themselves in the same status (a stale view gets 409 and is
    counted again on the next watch event); no per-node map. A restarted controller does not count itself
    twice (it remembers what it counted)."""
    seed_cluster(server)
    server.create("nodes", {"metadata": {"name": "n2"}, "status": {"addresses": []}})
    c1, c2 = controller_config(tmp_path / "n1", "n1"), controller_config(tmp_path / "n2", "n2")
    with (
        running_controller(server, c1),
        running_controller(server, c2),
        running_agent(c1),
        running_agent(c2),
    ):
        server.create("l7networkpolicies", l7np("both", "shop", ALLOW_WEB))

        def both() -> dict[str, Any] | None:
            obj = server.get("l7networkpolicies", "both", "shop")
            st = obj.get("status") or {}
            c = condition(obj, "Enforced")
            return obj if st.get("enforcingNodes") == 2 and c and c["status"] == "True" else None

        obj = wait_for("both nodes enforcing", both)
        assert "nodes" not in obj["status"] and obj["status"]["failingNodes"] == 0
        assert condition(obj, "Enforced")["message"] == "2 nodes enforce generation 1"  # type: ignore[index]
        # the status is patched first, then the node writes down what it counted
        wait_for("the counted file", c1.counted_file.exists)
        assert json.loads(c1.counted_file.read_text()) == {
            "l7networkpolicies.l7gate.io/L7NetworkPolicy/shop/both": {
                "uid": obj["metadata"]["uid"],
                "generation": 1,
                "state": "enforcing",
            }
        }
    patches = len(server.patches)
    with running_controller(server, c1), running_agent(c1):  # n1's agent and controller restart
        server.create("l7networkpolicies", l7np("later", "shop", ALLOW_WEB))
        wait_for(
            "the new policy counted",
            lambda: (
                (server.get("l7networkpolicies", "later", "shop").get("status") or {}).get("enforcingNodes")
                == 1
            ),
        )
        assert server.get("l7networkpolicies", "both", "shop")["status"]["enforcingNodes"] == 2
        assert [p for p in server.patches[patches:] if p[1] == "shop/both"] == []


def test_a_failing_node_is_listed_and_taken_off_when_it_leaves(server: FakeAPIServer, tmp_path: Path) -> None:
    """n1 enforces; n3's agent reports an error for the set it saw: the status counts one of each, lists
    n3 with its error, and Enforced is False (Failed). n3 leaves the cluster: n1 takes it off."""
    seed_cluster(server)
    server.create("nodes", {"metadata": {"name": "n3"}, "status": {"addresses": []}})
    c1, c3 = controller_config(tmp_path / "n1", "n1"), controller_config(tmp_path / "n3", "n3")
    server.create("l7networkpolicies", l7np("web", "shop", ALLOW_WEB))
    with running_controller(server, c1), running_agent(c1), running_controller(server, c3) as ctl3:
        # n3's agent saw the controller's set and could not apply it (what l7.agent.node reports)
        report = {
            "pid": os.getpid(),
            "ready": False,
            "seen_policies_hash": ctl3.policy_set.digest,
            "errors": ["L7NetworkPolicy/shop/web.yaml: datapath: map full"],
        }
        c3.agent_status.write_text(json.dumps(report))

        def counted(enforcing: int, failing: int) -> dict[str, Any] | None:
            st = server.get("l7networkpolicies", "web", "shop").get("status") or {}
            return st if (st.get("enforcingNodes"), st.get("failingNodes")) == (enforcing, failing) else None

        st = wait_for("one enforcing, one failing", lambda: counted(1, 1))
        assert st["failures"] == [
            {"node": "n3", "message": "agent: L7NetworkPolicy/shop/web.yaml: datapath: map full"}
        ]
        enforced = next(c for c in st["conditions"] if c["type"] == "Enforced")
        assert (enforced["status"], enforced["reason"]) == ("False", "Failed")
        assert "1 node enforces generation 1, 1 failing: n3: agent:" in enforced["message"]
        server.delete("nodes", "n3")
        st = wait_for("n3 taken off", lambda: counted(1, 0))
        assert st["failures"] == []
        before = len(server.patches)
        time.sleep(0.5)  # under test: n3's controller, still running, does not put itself back
        assert server.patches[before:] == [] and counted(1, 0)


def test_cilium_flag_without_cilium_crds_installed(server: FakeAPIServer, tmp_path: Path) -> None:
    """--cilium-policies on a cluster without Cilium's CRDs: no objects of those kinds, not a failure."""
    seed_cluster(server)
    server.unserved |= {"ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"}
    server.create("l7networkpolicies", l7np("ours", "shop", ALLOW_WEB))
    cfg = controller_config(tmp_path, "n1", cilium=True)
    with running_controller(server, cfg):
        assert list(policy_files(cfg)) == ["L7NetworkPolicy/shop/ours.yaml"]


def _keyed_spec(*header_matches: dict[str, Any]) -> dict[str, Any]:
    rules = [{"headerMatches": [match]} for match in header_matches]
    port = {"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": rules}}
    return {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"toPorts": [port]}]}


def test_secrets_referenced_by_header_matches(server: FakeAPIServer, tmp_path: Path) -> None:
    """Only referenced secrets are read (GET, never a list), and only in the secrets namespace; their
    single value is written where the agent looks the reference up."""
    seed_cluster(server)
    key = base64.b64encode(b"s3cret").decode()
    secret = {"metadata": {"name": "api-key", "namespace": "l7gate-secrets"}, "data": {"key": key}}
    server.create("secrets", secret)
    server.create("secrets", {"metadata": {"name": "api-key", "namespace": "shop"}, "data": {"k": key}})
    spec = _keyed_spec(
        {"name": "X-Key", "secret": {"namespace": "l7gate-secrets", "name": "api-key"}},
        {"name": "X-Same", "secret": {"name": "api-key"}},
        {"name": "X-Other", "secret": {"name": "missing"}},
    )
    cfg = controller_config(tmp_path, "n1")
    with running_controller(server, cfg):
        server.create("l7networkpolicies", l7np("keyed", "shop", spec))
        path = cfg.secrets / "l7gate-secrets" / "api-key"
        wait_for("the secret file", path.exists)
        wait_for("both lookups written", lambda: len(load_secrets(cfg.secrets)) == 2)
        # as the Envoy service reads them: under the namespace as written, or default without one
        assert load_secrets(cfg.secrets) == {
            ("l7gate-secrets", "api-key"): "s3cret",
            ("default", "api-key"): "s3cret",
        }
        assert path.stat().st_mode & 0o777 == 0o600
        # no longer referenced: removed
        server.delete("l7networkpolicies", "keyed", "shop")
        wait_for("the secret file removed", lambda: not path.exists())
    gets = [p for m, p, _ in server.requests if m == "GET" and "/secrets/" in p]
    assert gets and all("/namespaces/l7gate-secrets/secrets/" in p for p in gets)
    assert any(p.endswith("/namespaces/l7gate-secrets/secrets/missing") for p in gets)
    assert not [p for m, p, _ in server.requests if m in ("LIST", "WATCH") and "secrets" in p]


def test_header_secret_in_another_namespace_is_a_policy_error(server: FakeAPIServer, tmp_path: Path) -> None:
    """RBAC lets the agent read Secrets only in the secrets namespace: a reference elsewhere is refused
    with its field path (never read, never silently unmatched)."""
    seed_cluster(server)
    spec = _keyed_spec({"name": "X-Key", "secret": {"namespace": "shop", "name": "api-key"}})
    cfg = controller_config(tmp_path, "n1")
    with running_controller(server, cfg):
        server.create("l7networkpolicies", l7np("keyed", "shop", spec))
        wait_for(
            "the error in status",
            lambda: (server.get("l7networkpolicies", "keyed", "shop").get("status") or {}).get("errors"),
        )
        errors = server.get("l7networkpolicies", "keyed", "shop")["status"]["errors"]
    paths = {e["path"] for e in errors}
    assert "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret.namespace" in paths
    assert not [p for m, p, _ in server.requests if "/secrets/" in p]


def test_services_without_selector_get_endpointslice_backends(server: FakeAPIServer, tmp_path: Path) -> None:
    seed_cluster(server)
    server.create(
        "services", {"metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"app": "web"}}}
    )
    server.create(
        "services", {"metadata": {"name": "db", "namespace": "shop", "labels": {"tier": "data"}}, "spec": {}}
    )
    endpoint_slice = {
        "metadata": {"name": "db-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.9.0.2"], "conditions": {"ready": True}},
            {"addresses": ["10.9.0.1"]},
            {"addresses": ["10.9.0.3"], "conditions": {"ready": False}},  # not ready: not a backend
        ],
    }
    server.create("endpointslices", endpoint_slice)
    cfg = controller_config(tmp_path, "n1")
    with running_controller(server, cfg):
        services = wait_for("the services", lambda: endpoints(cfg).get("services") or None)
        by_name = {s["name"]: s for s in services}
        assert by_name["web"]["selector"] == {"app": "web"} and "backends" not in by_name["web"]
        assert by_name["db"]["backends"] == ["10.9.0.1", "10.9.0.2"] and by_name["db"]["labels"] == {
            "tier": "data"
        }
        # a slice change reaches the file
        changed = server.get("endpointslices", "db-1", "shop")
        changed["endpoints"] = [{"addresses": ["10.9.0.7"]}]
        server.update("endpointslices", changed)
        wait_for(
            "the new backend",
            lambda: (
                next(s for s in endpoints(cfg)["services"] if s["name"] == "db").get("backends")
                == ["10.9.0.7"]
            ),
        )
