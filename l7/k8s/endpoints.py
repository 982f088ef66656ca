"""Pods, Namespaces, Nodes and Services (API objects as dicts) → the agent's endpoints file.

* a Pod becomes an endpoint when it has IPs, is not ``hostNetwork`` (its IP is the node's) and has not
  finished (``Succeeded``/``Failed`` pods may hand their IP to a new pod); labels, service account and
  node are taken as they are, named container ports become ``ports``. Pods on every node are included
  (remote ones enter the ipcache only); the agent attaches to those whose ``node`` is its own.
* an IP claimed by two pods (an old pod not yet gone) goes to the most recently created one.
* Namespaces give their labels; Nodes their ``InternalIP``/``ExternalIP`` addresses and labels;
  Services with a selector are listed with it; a Service without a selector gets the addresses of its
  EndpointSlices (label ``kubernetes.io/service-name``) as ``backends``, endpoints known to be unready
  left out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from l7.endpoints import EndpointsFile, parse_endpoints

Obj = Mapping[str, Any]
_FINISHED = frozenset({"Succeeded", "Failed"})


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _labels(obj: Obj) -> dict[str, str]:
    labels = _meta(obj).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _valid_ip(value: object) -> str | None:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return None


def pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    raw = [p.get("ip") for p in status.get("podIPs") or []] or [status.get("podIP")]
    out: list[str] = []
    for value in raw:
        ip = _valid_ip(value) if value else None
        if ip and ip not in out:
            out.append(ip)
    return out


def pod_endpoint(pod: Obj) -> dict[str, Any] | None:
    """The endpoint entry of a pod, or None when the pod is not an endpoint (see the module doc)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in _FINISHED:
        return None
    ips = pod_ips(pod)
    if not ips:
        return None
    meta = _meta(pod)
    ports: dict[str, int] = {}
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            name, number = port.get("name"), port.get("containerPort")
            if name and isinstance(number, int) and 1 <= number <= 65535:
                ports.setdefault(str(name).lower(), number)
    out: dict[str, Any] = {
        "name": meta.get("name"),
        "namespace": meta.get("namespace") or "default",
        "labels": _labels(pod),
        "ips": ips,
        "serviceAccount": spec.get("serviceAccountName") or "default",
    }
    if spec.get("nodeName"):
        out["node"] = spec["nodeName"]
    if ports:
        out["ports"] = ports
    return out


def node_entry(node: Obj) -> dict[str, Any]:
    addresses = (node.get("status") or {}).get("addresses") or []
    ips: list[str] = []
    for address in addresses:
        if address.get("type") in ("InternalIP", "ExternalIP"):
            ip = _valid_ip(address.get("address"))
            if ip and ip not in ips:
                ips.append(ip)
    return {"name": _meta(node).get("name"), "ips": ips, "labels": _labels(node)}


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def slice_backends(slices: Iterable[Obj]) -> dict[tuple[str, str], list[str]]:
    """(namespace, Service name) → the addresses of its EndpointSlices' endpoints that are not known to
    be unready (``conditions.ready`` false), for the Services without a selector."""
    out: dict[tuple[str, str], list[str]] = {}
    for s in slices:
        meta = _meta(s)
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            continue
        ips = out.setdefault((str(meta.get("namespace") or "default"), str(service)), [])
        for endpoint in s.get("endpoints") or []:
            if ((endpoint or {}).get("conditions") or {}).get("ready") is False:
                continue
            for address in (endpoint or {}).get("addresses") or []:
                ip = _valid_ip(address)
                if ip and ip not in ips:
                    ips.append(ip)
    return out


def service_entry(
    service: Obj, backends: Mapping[tuple[str, str], list[str]] | None = None
) -> dict[str, Any]:
    meta = _meta(service)
    selector = (service.get("spec") or {}).get("selector") or None
    out: dict[str, Any] = {
        "name": meta.get("name"),
        "namespace": meta.get("namespace") or "default",
        "labels": _labels(service),
    }
    if selector:
        out["selector"] = {str(k): str(v) for k, v in selector.items()}
    else:  # a Service without a selector: its backends are its EndpointSlices' addresses
        ips = (backends or {}).get((str(out["namespace"]), str(out["name"])))
        if ips:
            out["backends"] = sorted(ips)
    return out


def _sort_key(obj: Obj) -> tuple[str, str]:
    meta = _meta(obj)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def endpoints_document(
    pods: Iterable[Obj],
    namespaces: Iterable[Obj],
    nodes: Iterable[Obj],
    services: Iterable[Obj],
    slices: Iterable[Obj] = (),
) -> dict[str, Any]:
    """The endpoints file content (deterministic: sorted by namespace and name)."""
    pods = sorted(pods, key=_sort_key)
    backends = slice_backends(slices)
    # newest first for the IP claims: creationTimestamp is RFC 3339 in UTC, so it sorts as text
    owner: dict[str, tuple[str, str]] = {}
    for pod in sorted(pods, key=lambda p: str(_meta(p).get("creationTimestamp") or ""), reverse=True):
        for ip in pod_ips(pod) if pod_endpoint(pod) else []:
            owner.setdefault(ip, _sort_key(pod))
    endpoints = []
    for pod in pods:
        entry = pod_endpoint(pod)
        if entry is None:
            continue
        entry["ips"] = [ip for ip in entry["ips"] if owner.get(ip) == _sort_key(pod)]
        if entry["ips"]:
            endpoints.append(entry)
    return {
        "endpoints": endpoints,
        "namespaces": {
            str(_meta(ns).get("name")): {"labels": _labels(ns)} for ns in sorted(namespaces, key=_sort_key)
        },
        "nodes": [node_entry(n) for n in sorted(nodes, key=_sort_key)],
        "services": [service_entry(s, backends) for s in sorted(services, key=_sort_key)],
    }


def endpoints_file(
    pods: Iterable[Obj], namespaces: Iterable[Obj], nodes: Iterable[Obj], services: Iterable[Obj]
) -> EndpointsFile:
    """The validated endpoints file (raises :class:`l7.endpoints.EndpointsError` when invalid)."""
    return parse_endpoints(endpoints_document(pods, namespaces, nodes, services), "<kubernetes>")
