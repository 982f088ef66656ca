"""The lab's cluster DNS: a dnsmasq configuration built from the topology and the plan (a pure function),
and the resolver configuration each pod gets in ``/etc/netns/<netns>/resolv.conf``.

dnsmasq answers only from its configuration (``no-resolv``, ``local=/#/``): unknown names are NXDOMAIN,
known names without the asked type are NODATA, nothing is ever forwarded out of the lab.

- pods: ``NAME.NAMESPACE.svc.cluster.local``, ``NAME.NAMESPACE`` and (when unique) ``NAME``;
- services: ``SVC.NAMESPACE.svc.cluster.local`` → the IPs of the selected pods (no ClusterIP);
- world hosts: their ``names`` → their addresses;
- ``dns.records``: A/AAAA, CNAME, a world host's addresses, wildcards (``*.corp.example.com``).
"""

from __future__ import annotations

from l7.lab.addressing import Plan
from l7.lab.topology import Topology

CLUSTER_DOMAIN = "cluster.local"


def search_list(namespace: str) -> list[str]:
    return [f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]


def resolv_conf(nameserver: str, namespace: str) -> str:
    return (
        "# written by l7gate lab; removed at lab down\n"
        f"nameserver {nameserver}\n"
        f"search {' '.join(search_list(namespace))}\n"
        "options ndots:5\n"
    )


def hosts_file(name: str, ips: list[str]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{name}" for ip in ips]
    return "\n".join(lines) + "\n"


def _host_records(names: list[str], ips: list[str], ttl: int) -> list[str]:
    return [f"host-record={','.join(names)},{ip},{ttl}" for ip in ips]


def world_addresses(topo: Topology, plan: Plan) -> dict[str, list[str]]:
    """Every external name the lab DNS answers with addresses → those addresses (CNAMEs followed)."""
    out: dict[str, list[str]] = {}
    for host in topo.world:
        for name in host.names:
            out[name] = plan.world(host.name).ips
    for rec in topo.dns.records:
        if rec.world is not None:
            out[rec.name] = plan.world(rec.world).ips
        elif rec.cname is None:
            out[rec.name] = [*rec.a, *rec.aaaa]
    for rec in topo.dns.records:
        if rec.cname is not None:
            out[rec.name] = list(out.get(rec.cname, []))
    return out


def cluster_names(topo: Topology, plan: Plan) -> dict[str, list[str]]:
    """Every cluster name (pods and services) → addresses."""
    out: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for pod in topo.all_pods():
        counts[pod.name] = counts.get(pod.name, 0) + 1
    for pod in topo.all_pods():
        ips = plan.pod(pod.key).ips
        out[f"{pod.name}.{pod.namespace}.svc.{CLUSTER_DOMAIN}"] = ips
        out[f"{pod.name}.{pod.namespace}"] = ips
        if counts[pod.name] == 1:
            out[pod.name] = ips
    for svc in topo.services:
        ips = [ip for pod in topo.selected(svc) for ip in plan.pod(pod.key).ips]
        out[f"{svc.name}.{svc.namespace}.svc.{CLUSTER_DOMAIN}"] = ips
    return out


def dnsmasq_conf(topo: Topology, plan: Plan) -> str:
    """The complete dnsmasq configuration of the lab's DNS pod."""
    ttl = topo.dns.ttl
    lines = [
        "# l7gate lab DNS (dnsmasq); generated at lab up",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "local=/#/",
        "port=53",
        f"local-ttl={ttl}",
        "log-queries",
        "cache-size=0",
    ]
    lines.append("# pods and services")
    for name, ips in cluster_names(topo, plan).items():
        lines += _host_records([name], ips, ttl)
    lines.append("# world hosts")
    for host in topo.world:
        if host.names:
            wttl = host.ttl if host.ttl is not None else ttl
            lines += _host_records(host.names, plan.world(host.name).ips, wttl)
    lines.append("# records")
    for rec in topo.dns.records:
        ips = plan.world(rec.world).ips if rec.world is not None else [*rec.a, *rec.aaaa]
        rttl = rec.ttl if rec.ttl is not None else ttl
        if rec.cname is not None:
            lines.append(f"cname={rec.name},{rec.cname},{rttl}")
        elif rec.wildcard:
            lines += [f"address=/{rec.name}/{ip}" for ip in ips]
            # other types under the wildcard: NODATA (not REFUSED)
            lines.append(f"local=/{rec.name}/")
        else:
            lines += _host_records([rec.name], ips, rttl)
    return "\n".join(lines) + "\n"
