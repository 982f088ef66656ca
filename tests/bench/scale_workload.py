"""The cluster-scale workload of issue 12, generated deterministically from a seed.

::

    Params ──generate()──► Workload (plain dicts: policy documents, endpoints file, learned FQDN IPs)
                              │
                              ├── write(workload, DIR) ─► DIR/policies/<name>.yaml   (one policy per file)
                              │                           DIR/endpoints.json         (l7.endpoints format)
                              │                           DIR/learned.json           (name → IPs)
                              ├── policies(workload)   ─► tuple[Policy, ...]      (l7.policy.documents)
                              ├── endpoints(workload)  ─► EndpointsFile           (l7.endpoints)
                              ├── learned_by_ip(workload) ► IP → names            (Resolver.resolve's learned)
                              └── fqdn_cache_state(workload, now) ► the agent DNS service's cache file

Full size (``FULL``): 5,000 endpoints in 200 namespaces on 50 nodes (100 per node; plus two kube-dns
pods in ``kube-system`` on other nodes), 3,000
CiliumNetworkPolicies — a third L3/L4, a third HTTP rules (regex paths, a header), a third DNS
``matchPattern`` rules + ``toFQDNs`` — and 50,000 IPs learned for names that those ``toFQDNs`` select.
``QUICK``: 500 endpoints in 20 namespaces on 5 nodes (still 100 per node), 300 policies, 5,000 IPs.

Addresses are private or reserved for tests only: pods 10.0.0.0/8, nodes 192.168.0.0/16, learned
FQDN IPs from the benchmarking range 198.18.0.0/15 and from fd00::/8 (one in ten), CIDR peers from
198.18.0.0/15 too. Nothing here sends traffic.

    .venv/bin/python -m tests.bench.scale_workload DIR [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from l7.endpoints import EndpointsFile
    from l7.policy.documents import Policy

DOMAIN = "bench.test"
"""Every generated FQDN ends in this (a reserved test TLD)."""
KUBE_DNS_NAMESPACE = "kube-system"
TIERS = ("web", "api", "db", "worker", "cache")
ENVS = ("prod", "staging", "dev")
APP_PORT = 8080
V4_WORLD = ipaddress.IPv4Network("198.18.0.0/15")
V6_WORLD = ipaddress.IPv6Network("fd00:18::/64")
IPS_PER_NAME = 25  # below the DNS service's default cap of 50 IPs per name


@dataclass(frozen=True)
class Params:
    endpoints: int = 5000
    namespaces: int = 200
    nodes: int = 50
    policies: int = 3000
    learned_ips: int = 50_000
    apps_per_namespace: int = 5
    seed: int = 12
    local_node: str = "node-00"
    """The node whose agent the benchmarks run (every node gets endpoints/nodes of them)."""


FULL = Params()
QUICK = Params(endpoints=500, namespaces=20, nodes=5, policies=300, learned_ips=5000)


@dataclass(frozen=True)
class Workload:
    params: Params
    documents: tuple[dict[str, Any], ...]  # one CiliumNetworkPolicy each
    endpoints_data: dict[str, Any]  # the endpoints file's content
    learned: dict[str, tuple[str, ...]]  # DNS name → IPs learned for it

    @property
    def local_endpoints(self) -> list[dict[str, Any]]:
        return [e for e in self.endpoints_data["endpoints"] if e.get("node") == self.params.local_node]


@dataclass(frozen=True)
class Paths:
    root: Path
    policies: Path  # directory, one policy per file
    endpoints: Path
    learned: Path


# ------------------------------------------------------------------------------------------ names
def namespace_name(k: int) -> str:
    return f"ns-{k:03d}"


def node_name(k: int) -> str:
    return f"node-{k:02d}"


def pattern_name(j: int) -> str:
    """The j-th ``toFQDNs``/DNS ``matchPattern`` target: ``*.svc<j>.bench.test``."""
    return f"svc{j}.{DOMAIN}"


def policy_file_name(doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    return f"{meta['namespace']}--{meta['name']}.yaml"


def pod_ip(i: int) -> str:
    return str(ipaddress.IPv4Address("10.64.0.0") + i + 1)


def node_ip(k: int) -> str:
    return str(ipaddress.IPv4Address("192.168.64.0") + k + 1)


def world_ip(n: int) -> str:
    """The n-th learned/world address: one in ten IPv6 (fd00:18::/64), the rest 198.18.0.0/15."""
    if n % 10 == 9:
        return str(V6_WORLD.network_address + n + 1)
    return str(V4_WORLD.network_address + n + 1)


# ------------------------------------------------------------------------------------- endpoints
def _endpoints_data(p: Params, rng: random.Random) -> dict[str, Any]:
    namespaces: dict[str, Any] = {
        KUBE_DNS_NAMESPACE: {"labels": {"team": "infra"}},
    }
    for k in range(p.namespaces):
        namespaces[namespace_name(k)] = {"labels": {"team": f"team-{k % 20}", "env": ENVS[k % len(ENVS)]}}
    nodes = [
        {"name": node_name(k), "ips": [node_ip(k)], "labels": {"zone": f"zone-{k % 3}"}}
        for k in range(p.nodes)
    ]
    endpoints: list[dict[str, Any]] = []
    # Two kube-dns pods besides the p.endpoints workloads, on the second and third node (not local).
    for i in range(2):
        endpoints.append(
            {
                "name": f"coredns-{i}",
                "namespace": KUBE_DNS_NAMESPACE,
                "labels": {"k8s-app": "kube-dns"},
                "ips": [f"10.63.0.{53 + i}"],
                "node": node_name((i + 1) % p.nodes),
                "ports": {"dns": 53},
            }
        )
    for i in range(p.endpoints):
        ns = i % p.namespaces
        app = (i // p.namespaces) % p.apps_per_namespace
        endpoints.append(
            {
                "name": f"pod-{i:05d}",
                "namespace": namespace_name(ns),
                "labels": {
                    "app": f"app-{app}",
                    "tier": TIERS[app % len(TIERS)],
                    "version": rng.choice(("v1", "v2")),
                },
                "ips": [pod_ip(i)],
                "node": node_name(i % p.nodes),
                "serviceAccount": f"sa-{app}",
                "ports": {"http": APP_PORT},
            }
        )
    return {"namespaces": namespaces, "nodes": nodes, "endpoints": endpoints}


def new_endpoint(p: Params, i: int) -> dict[str, Any]:
    """An extra endpoint on the local node (index ``i`` ≥ p.endpoints), for "pod added"."""
    return {
        "name": f"pod-new-{i:05d}",
        "namespace": namespace_name(0),
        "labels": {"app": "app-0", "tier": TIERS[0], "version": "v1"},
        "ips": [pod_ip(p.endpoints + i)],
        "node": p.local_node,
        "ports": {"http": APP_PORT},
    }


# -------------------------------------------------------------------------------------- policies
def _cnp(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _app(rng: random.Random, p: Params) -> str:
    return f"app-{rng.randrange(p.apps_per_namespace)}"


def l4_policy(i: int, p: Params, rng: random.Random) -> dict[str, Any]:
    ns = namespace_name(i % p.namespaces)
    selector = {"matchLabels": {"app": _app(rng, p)}}
    port = str(rng.choice((80, 443, 5432, 6379, APP_PORT, 9000 + i % 100)))
    form = (i // 3) % 4
    if form == 0:  # same-namespace peers
        rule: dict[str, Any] = {"ingress": [{"fromEndpoints": [{"matchLabels": {"app": _app(rng, p)}}]}]}
    elif form == 1:  # peers in another namespace, by namespace label + tier expression
        other = namespace_name(rng.randrange(p.namespaces))
        rule = {
            "ingress": [
                {
                    "fromEndpoints": [
                        {
                            "matchLabels": {"k8s:io.kubernetes.pod.namespace": other},
                            "matchExpressions": [
                                {"key": "tier", "operator": "In", "values": list(rng.sample(TIERS, 2))}
                            ],
                        }
                    ]
                }
            ]
        }
    elif form == 2:  # egress to endpoints in the namespace
        rule = {"egress": [{"toEndpoints": [{"matchLabels": {"tier": rng.choice(TIERS)}}]}]}
    else:  # egress to a world CIDR
        base = V4_WORLD.network_address + rng.randrange(0, 2**17, 256)
        rule = {"egress": [{"toCIDR": [f"{base}/24"]}]}
    direction = "ingress" if "ingress" in rule else "egress"
    rule[direction][0]["toPorts"] = [{"ports": [{"port": port, "protocol": "TCP"}]}]
    return _cnp(f"l4-{i:05d}", ns, {"endpointSelector": selector, **rule})


def http_policy(i: int, p: Params, rng: random.Random, variant: int = 0) -> dict[str, Any]:
    ns = namespace_name(i % p.namespaces)
    resource = rng.choice(("items", "orders", "users", "carts", "reports"))
    http: list[dict[str, Any]] = [
        {
            "method": "GET",
            "path": f"/api/v{1 + variant}/{resource}/[0-9]+(/.*)?",
            "headers": [f"X-Tenant: t{i}"],
        },
        {"method": "POST|PUT", "path": f"/api/v{1 + variant}/{resource}", "headers": [f"X-Tenant: t{i}"]},
    ]
    return _cnp(
        f"http-{i:05d}",
        ns,
        {
            "endpointSelector": {"matchLabels": {"app": _app(rng, p)}},
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": {"app": _app(rng, p)}}],
                    "toPorts": [
                        {"ports": [{"port": str(APP_PORT), "protocol": "TCP"}], "rules": {"http": http}}
                    ],
                }
            ],
        },
    )


def dns_patterns(p: Params) -> int:
    """How many distinct ``*.svc<j>`` patterns the DNS policies use (policies share them in pairs)."""
    return max(1, (p.policies // 3) // 2)


def dns_policy(i: int, p: Params, rng: random.Random) -> dict[str, Any]:
    ns = namespace_name(i % p.namespaces)
    patterns = dns_patterns(p)
    j = (i // 3) % patterns
    also = (j + 1) % patterns  # one exact name of the next pattern: names matched by two selectors
    return _cnp(
        f"dns-{i:05d}",
        ns,
        {
            "endpointSelector": {"matchLabels": {"app": _app(rng, p)}},
            "egress": [
                {
                    "toEndpoints": [
                        {
                            "matchLabels": {
                                "k8s:io.kubernetes.pod.namespace": KUBE_DNS_NAMESPACE,
                                "k8s-app": "kube-dns",
                            }
                        }
                    ],
                    "toPorts": [
                        {
                            "ports": [{"port": "53", "protocol": "ANY"}],
                            "rules": {
                                "dns": [
                                    {"matchPattern": f"*.{pattern_name(j)}"},
                                    {"matchName": f"api.{pattern_name(also)}"},
                                ]
                            },
                        }
                    ],
                },
                {
                    "toFQDNs": [
                        {"matchPattern": f"*.{pattern_name(j)}"},
                        {"matchName": f"api.{pattern_name(also)}"},
                    ],
                    "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
                },
            ],
        },
    )


def policy(i: int, p: Params, rng: random.Random) -> dict[str, Any]:
    return (l4_policy, http_policy, dns_policy)[i % 3](i, p, rng)


def changed_http_policy(workload: Workload, k: int) -> dict[str, Any]:
    """The first HTTP policy of ``workload`` with new content (``k``-th change: paths ``/api/v<k+2>``)."""
    index = next(i for i in range(workload.params.policies) if i % 3 == 1)
    rng = random.Random(f"{workload.params.seed}-policy-{index}")
    return http_policy(index, workload.params, rng, variant=k + 1)


# --------------------------------------------------------------------------------------- learned
def _learned(p: Params) -> dict[str, tuple[str, ...]]:
    """``learned_ips`` addresses over names that the ``toFQDNs`` patterns select: ``h<k>.svc<j>`` and
    ``api.svc<j>`` (the latter matched by a pattern and by another policy's matchName)."""
    patterns = dns_patterns(p)
    names: list[str] = []
    k = 0
    while len(names) * IPS_PER_NAME < p.learned_ips:
        j = k % patterns
        names.append(f"api.{pattern_name(j)}" if k < patterns else f"h{k // patterns}.{pattern_name(j)}")
        k += 1
    out: dict[str, tuple[str, ...]] = {}
    n = 0
    for name in names:
        count = min(IPS_PER_NAME, p.learned_ips - n)
        out[name] = tuple(world_ip(n + c) for c in range(count))
        n += count
    return out


# ------------------------------------------------------------------------------------------- API
def generate(params: Params = FULL) -> Workload:
    """The workload for ``params``: the same seed gives the same documents, byte for byte."""
    rng = random.Random(params.seed)
    endpoints_data = _endpoints_data(params, rng)
    documents = tuple(
        policy(i, params, random.Random(f"{params.seed}-policy-{i}")) for i in range(params.policies)
    )
    return Workload(params, documents, endpoints_data, _learned(params))


def dump_policy(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def dump_endpoints(data: dict[str, Any]) -> str:
    """JSON (a subset of YAML, as the lab writes its endpoints file): much faster to parse."""
    return json.dumps(data, indent=None, separators=(",", ":"))


def write(workload: Workload, root: Path) -> Paths:
    """Write the workload under ``root`` (created; existing policy files of the same names replaced)."""
    paths = Paths(root, root / "policies", root / "endpoints.json", root / "learned.json")
    paths.policies.mkdir(parents=True, exist_ok=True)
    for doc in workload.documents:
        (paths.policies / policy_file_name(doc)).write_text(dump_policy(doc))
    paths.endpoints.write_text(dump_endpoints(workload.endpoints_data))
    paths.learned.write_text(json.dumps({n: list(ips) for n, ips in workload.learned.items()}))
    return paths


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place (atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def policies(workload: Workload) -> tuple[Policy, ...]:
    """The documents parsed and validated by :func:`l7.policy.documents.load_text`; raises
    ``ValueError`` listing every error when one does not validate."""
    return load_policies_text(yaml.safe_dump_all(workload.documents, sort_keys=False))


def load_policies_text(text: str, source: str = "<scale workload>") -> tuple[Policy, ...]:
    """Validated policies of a (multi-document) YAML text; ``ValueError`` with every error otherwise."""
    from l7.policy.documents import load_text

    result = load_text(text, source)
    if result.errors:
        raise ValueError("\n".join(str(e) for e in result.errors))
    return result.policies


def load_policies(directory: Path) -> tuple[Policy, ...]:
    """The written policy directory through :func:`l7.policy.documents.load_paths` (as the agent loads it)."""
    from l7.policy.documents import load_paths

    result = load_paths([directory])
    if result.errors:
        raise ValueError("\n".join(str(e) for e in result.errors))
    return result.policies


def endpoints(workload: Workload) -> EndpointsFile:
    from l7.endpoints import parse_endpoints

    return parse_endpoints(workload.endpoints_data, "<scale workload>")


def learned_by_ip(workload: Workload) -> dict[str, list[str]]:
    """IP → names (what :meth:`l7.resolve.Resolver.resolve` takes as ``learned``)."""
    out: dict[str, list[str]] = {}
    for name, ips in workload.learned.items():
        for ip in ips:
            out.setdefault(ip, []).append(name)
    return out


def fqdn_cache_state(workload: Workload, now: float | None = None, ttl: int = 86400) -> dict[str, Any]:
    """The learned map as the agent's DNS service saves it (``<state-dir>/fqdn-cache-<node>.json``,
    :meth:`l7.agent.fqdn.FQDNCache.dumps`), so an agent started with ``--services dns`` restores it."""
    now = time.time() if now is None else now
    return {
        "version": 1,
        "names": {name: [[ip, ttl, now, now + ttl] for ip in ips] for name, ips in workload.learned.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the issue-12 scale workload to a directory.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=FULL.seed)
    args = parser.parse_args()
    params = dataclasses.replace(QUICK if args.quick else FULL, seed=args.seed)
    paths = write(generate(params), args.directory)
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(paths).items()}))


if __name__ == "__main__":
    main()
