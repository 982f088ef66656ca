"""Flow records: the three flow-log files of a node agent, read and normalised into one :class:`Flow`.

::

    <state-dir>/flows-<node>-l3l4.jsonl   datapath events (l7.agent.flows writes them)  ─┐
    <state-dir>/flows-<node>-http.jsonl   Envoy's JSON access log (l7xds.translate) ─┼─► parse_* ─► Flow
    <state-dir>/flows-<node>-dns.jsonl    the DNS proxy's query events                   ─┘        │
                                                                                                   ▼
    endpoints file (pods, nodes, world names) + DNS answers (ip → qname) ──► Names ──► Flow.src/dst names
    the applied policy set (l7.flow_decisions, at read time) ──► Flow.direction/decision/decided_by

Every parser is a pure function of one JSON object (malformed lines are skipped by the reader, never
fatal). :class:`FlowReader` reads all files of a state directory, follows them (``follow``) across
size-capped rotation (``.1``), and hands out flows in time order.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

FLOW_TYPES = ("l3l4", "http", "dns")
VERDICTS = ("allowed", "denied", "audit")
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
QTYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    65: "HTTPS",
}
_ADDR = re.compile(r"^\[?(?P<ip>[0-9A-Fa-f:.]+?)\]?:(?P<port>\d+)$")


def flow_path(state_dir: Path, node: str, kind: str) -> Path:
    """``<state-dir>/flows-<node>-<kind>.jsonl`` (kind: l3l4, http or dns)."""
    return state_dir / f"flows-{node}-{kind}.jsonl"


@dataclass(frozen=True)
class Flow:
    """One flow event of any kind. Names are filled in by :meth:`Names.name` when known."""

    time: float
    node: str
    type: str  # l3l4 | http | dns
    verdict: str  # allowed | denied | audit
    reason: str = ""
    proto: str = ""
    src_ip: str = ""
    src_port: int = 0
    dst_ip: str = ""
    dst_port: int = 0
    src: str = ""  # "ns/pod", "node:NAME", "world:NAME", an FQDN, or "" (unknown)
    dst: str = ""
    src_identity: int | None = None
    dst_identity: int | None = None
    http_method: str = ""
    http_path: str = ""
    http_host: str = ""
    http_status: int | None = None
    dns_qname: str = ""
    dns_qtype: str = ""
    dns_rcode: str = ""
    dns_ips: tuple[str, ...] = field(default_factory=tuple)
    # ingress | egress: whose policy decided (egress of the source, ingress of the destination)
    direction: str = ""
    # what decided, from the applied policy set (l7.flow_decisions): allow-rule, deny-rule, l7,
    # default-deny, no-policy, default-allow; ``decided_by``: "policy field-path" of the deciding rules
    # (for a default deny: the policies that put the endpoint in default deny)
    decision: str = ""
    decided_by: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dns_ips"] = list(self.dns_ips)
        out["decided_by"] = list(self.decided_by)
        return {k: v for k, v in out.items() if v not in ("", None, [])}

    @property
    def redirected(self) -> bool:
        """An L3/L4 flow the datapath sent to a proxy (Envoy or the DNS proxy)."""
        return self.reason.startswith("to-proxy")

    def touches(self, pod: str) -> bool:
        """Whether ``pod`` ("name" or "ns/name") is the source or the destination."""
        return _is_pod(self.src, pod) or _is_pod(self.dst, pod)


def _is_pod(name: str, pod: str, prefix: bool = False) -> bool:
    """``name`` ("ns/name") is ``pod`` ("name" or "ns/name"; ``prefix``: a pod name prefix as in
    ``hubble observe --from-pod``)."""
    if "/" not in name or name.startswith(("node:", "world:")):
        return False
    ns, _, pod_name = name.partition("/")
    want_ns, _, want = pod.rpartition("/")
    if want_ns and want_ns != ns:
        return False
    return pod_name.startswith(want) if prefix else pod_name == want


# ------------------------------------------------------------------------------------------ parsing
def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _split_addr(value: object) -> tuple[str, int]:
    m = _ADDR.match(str(value or ""))
    if m is None:
        return "", 0
    return m.group("ip"), int(m.group("port"))


def parse_l3l4(obj: Mapping[str, Any], node: str) -> Flow:
    """One datapath event line (see :func:`l7.agent.flows.event_record`)."""
    verdict = str(obj.get("verdict", ""))
    reason = str(obj.get("reason", ""))
    if verdict == "drop":
        v = "denied"
    elif verdict == "audit":
        v = "audit"
    else:
        v = "allowed"
        if verdict == "redirect":
            reason = f"to-proxy:{obj.get('proxy_port', 0)}"
    if reason in ("", "NONE"):
        reason = "policy" if v == "allowed" else reason
    proto = _int(obj.get("proto")) or 0
    hook = str(obj.get("hook") or "")
    direction = "egress" if hook == "from_lxc" else ("ingress" if hook in ("to_lxc", "from_uplink") else "")
    return Flow(
        time=float(obj.get("time", 0.0)),
        node=node,
        type="l3l4",
        verdict=v,
        reason=reason.lower().replace("_", "-"),
        proto=PROTOCOLS.get(proto, str(proto)),
        src_ip=str(obj.get("src") or ""),
        src_port=_int(obj.get("sport")) or 0,
        dst_ip=str(obj.get("dst") or ""),
        dst_port=_int(obj.get("dport")) or 0,
        src_identity=_int(obj.get("src_identity")),
        dst_identity=_int(obj.get("dst_identity")),
        direction=direction,
    )


def _envoy_time(value: object) -> float:
    text = str(value or "")
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def parse_http(obj: Mapping[str, Any], node: str) -> Flow:
    """One line of Envoy's access log (fields: ``l7xds.translate.ACCESS_LOG_FIELDS``). The listener is
    transparent, so ``downstream_local`` is the original destination. A request answered by a ``deny``
    route (Cilium's 403 ``Access denied``) is ``denied``."""
    route = str(obj.get("route") or "")
    denied = route.startswith("deny")
    audited = route == "audit"  # l7xds.translate.AUDIT_ROUTE: no rule allows it, let through in audit mode
    src_ip, src_port = _split_addr(obj.get("downstream_remote"))
    dst_ip, dst_port = _split_addr(obj.get("downstream_local"))
    flags = str(obj.get("response_flags") or "")
    reason = "no-http-rule-matches" if denied or audited else (f"route:{route}" if route else "")
    if flags and flags != "-":
        reason = f"{reason} flags:{flags}".strip()
    return Flow(
        time=_envoy_time(obj.get("start_time")),
        node=node,
        type="http",
        verdict="denied" if denied else ("audit" if audited else "allowed"),
        reason=reason,
        proto="TCP",
        src_ip=src_ip,
        src_port=src_port,
        dst_ip=dst_ip,
        dst_port=dst_port,
        http_method=str(obj.get("method") or ""),
        http_path=str(obj.get("path") or ""),
        http_host=str(obj.get("authority") or ""),
        http_status=_int(obj.get("status")),
    )


def parse_dns(obj: Mapping[str, Any], node: str) -> Flow:
    """One DNS proxy query event (``dnsproxy.policy.QueryEvent`` + ``time`` + ``endpoint``)."""
    verdict = str(obj.get("verdict", ""))
    rcode = _int(obj.get("rcode"))
    qtype = _int(obj.get("qtype")) or 0
    ips = tuple(
        str(item[0]) if isinstance(item, list | tuple) else str(item) for item in obj.get("ips") or ()
    )
    return Flow(
        time=float(obj.get("time", 0.0)),
        node=node,
        type="dns",
        verdict="allowed" if verdict == "allowed" else ("audit" if verdict == "audit" else "denied"),
        reason=verdict if verdict != "allowed" else "",
        proto=str(obj.get("protocol") or "udp").upper(),
        src_ip=str(obj.get("source_ip") or ""),
        src_port=_int(obj.get("source_port")) or 0,
        dst_ip=str(obj.get("server_ip") or ""),
        dst_port=_int(obj.get("server_port")) or 0,
        src=str(obj.get("endpoint") or ""),
        dns_qname=str(obj.get("qname") or "").rstrip("."),
        dns_qtype=QTYPES.get(qtype, str(qtype)),
        dns_rcode="dropped" if rcode == -1 else RCODES.get(rcode or 0, str(rcode)),
        dns_ips=ips,
        direction="egress",  # the DNS proxy sees a pod's queries: its egress
    )


PARSERS = {"l3l4": parse_l3l4, "http": parse_http, "dns": parse_dns}
REQUIRED = {"l3l4": ("time", "verdict"), "http": ("start_time",), "dns": ("time", "qname")}


# -------------------------------------------------------------------------------------------- names
def _norm(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


class Names:
    """IP → a readable name: pods ("ns/name"), nodes ("node:NAME"), world names from the endpoints
    file's ``fqdns``, and names learned from DNS answers (the latest answer wins)."""

    def __init__(self, endpoints: Mapping[str, Any] | None = None) -> None:
        self.static: dict[str, str] = {}
        self.learned: dict[str, str] = {}
        self.labels: dict[str, dict[str, str]] = {}  # "ns/name" → the endpoint's labels
        if endpoints:
            for ep in endpoints.get("endpoints") or ():
                key = f"{ep.get('namespace', 'default')}/{ep.get('name')}"
                self.labels[key] = {str(k): str(v) for k, v in (ep.get("labels") or {}).items()}
                for ip in ep.get("ips") or ():
                    self.static[_norm(ip)] = key
            for node in endpoints.get("nodes") or ():
                for ip in node.get("ips") or ():
                    self.static[_norm(ip)] = f"node:{node.get('name')}"
            for name, ips in (endpoints.get("fqdns") or {}).items():
                for ip in ips:
                    self.static.setdefault(_norm(ip), str(name).rstrip("."))

    @classmethod
    def load(cls, path: Path) -> Names:
        """From an endpoints file, JSON (a lab's ``endpoints.json``) or YAML; empty when unreadable."""
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            return cls()
        return cls(data) if isinstance(data, dict) else cls()

    def learn(self, flow: Flow) -> None:
        if flow.type == "dns" and flow.dns_qname:
            for ip in flow.dns_ips:
                self.learned[_norm(ip)] = flow.dns_qname

    def of(self, ip: str) -> str:
        if not ip:
            return ""
        key = _norm(ip)
        return self.learned.get(key) or self.static.get(key, "")

    def name(self, flow: Flow) -> Flow:
        src = flow.src or self.of(flow.src_ip)
        dst = flow.dst or self.of(flow.dst_ip)
        if flow.type == "http" and not self.of(flow.dst_ip) and flow.http_host:
            dst = flow.http_host.split(":")[0]
        if (src, dst) == (flow.src, flow.dst):
            return flow
        return replace(flow, src=src, dst=dst)


# ------------------------------------------------------------------------------------------ reading
def parse_line(line: str, kind: str, node: str) -> Flow | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or any(key not in obj for key in REQUIRED[kind]):
        return None
    try:
        return PARSERS[kind](obj, node)
    except (TypeError, ValueError, KeyError):
        return None


_FILE = re.compile(r"^flows-(?P<node>.+)-(?P<kind>l3l4|http|dns)\.jsonl$")


@dataclass
class _Tail:
    path: Path
    node: str
    kind: str
    offset: int = 0
    inode: int = 0
    partial: str = ""


class FlowReader:
    """Reads every ``flows-*.jsonl`` of a state directory; :meth:`poll` returns what is new."""

    def __init__(self, state_dir: Path, names: Names | None = None) -> None:
        self.state_dir = state_dir
        self.names = names or Names()
        self._tails: dict[Path, _Tail] = {}

    def _discover(self) -> None:
        if not self.state_dir.is_dir():
            return
        for path in sorted(self.state_dir.iterdir()):
            m = _FILE.match(path.name)
            if m and path not in self._tails:
                tail = _Tail(path, m.group("node"), m.group("kind"))
                self._tails[path] = tail

    def _read(self, tail: _Tail) -> list[Flow]:
        try:
            st = tail.path.stat()
        except OSError:
            return []
        chunks: list[str] = []
        rotated = tail.path.with_name(tail.path.name + ".1")
        if not tail.inode or st.st_ino != tail.inode or st.st_size < tail.offset:
            # first look: the rotated file's history; after a rotation: the rest of the old file
            start = tail.offset if tail.inode else 0
            try:
                with rotated.open("rb") as fh:
                    fh.seek(start)
                    chunks.append(fh.read().decode(errors="replace"))
            except OSError:
                pass
            tail.offset = 0
        tail.inode = st.st_ino
        with tail.path.open("rb") as fh:
            fh.seek(tail.offset)
            data = fh.read()
            tail.offset += len(data)
        chunks.append(data.decode(errors="replace"))
        text = tail.partial + "".join(chunks)
        lines = text.split("\n")
        tail.partial = lines.pop()  # an incomplete last line waits for the rest
        out = []
        for line in lines:
            flow = parse_line(line, tail.kind, tail.node) if line.strip() else None
            if flow is not None:
                out.append(flow)
        return out

    def poll(self) -> list[Flow]:
        """New flows of every file, in time order, with names (DNS answers teach names first)."""
        self._discover()
        new: list[Flow] = []
        for tail in self._tails.values():
            new += self._read(tail)
        new.sort(key=lambda f: f.time)
        out = []
        for flow in new:
            self.names.learn(flow)
            out.append(self.names.name(flow))
        return out


#: ``--verdict`` words: hubble's (forwarded, dropped, redirected) besides l7gate's own.
VERDICT_ALIASES = {"forwarded": "allowed", "dropped": "denied"}


@dataclass(frozen=True)
class Filter:
    """``hubble observe``'s filters; every one given must match (a flow matches an empty filter).

    ``pod``: source or destination ("name" or "ns/name"); ``from_pod``/``to_pod``: a pod name prefix,
    ``[namespace/]name``; ``namespace``: source or destination namespace; ``labels``: ``key=value`` or
    ``key`` on the source or destination endpoint; ``since``/``until``: unix times; ``port``: source or
    destination port; ``http_status``: ``403`` or ``4+``; ``http_path``: a regex (searched);
    ``fqdn``: a DNS name pattern (``*.github.com``) of the query, the source or the destination;
    ``verdict``: allowed, denied, audit, redirected (or hubble's forwarded, dropped)."""

    pod: str | None = None
    from_pod: str | None = None
    to_pod: str | None = None
    namespace: str | None = None
    labels: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    port: int | None = None
    http_status: str | None = None
    http_path: str | None = None
    fqdn: str | None = None
    verdict: str | None = None
    type: str | None = None

    def matches(self, flow: Flow, names: Names | None = None) -> bool:
        if self.type and flow.type != self.type:
            return False
        if self.verdict:
            want = VERDICT_ALIASES.get(self.verdict, self.verdict)
            if want == "redirected":
                if not flow.redirected:
                    return False
            elif flow.verdict != want:
                return False
        if self.since is not None and flow.time < self.since:
            return False
        if self.until is not None and flow.time > self.until:
            return False
        if self.pod and not flow.touches(self.pod):
            return False
        if self.from_pod and not _is_pod(flow.src, self.from_pod, prefix=True):
            return False
        if self.to_pod and not _is_pod(flow.dst, self.to_pod, prefix=True):
            return False
        if self.namespace and not any(
            _is_pod(n, f"{self.namespace}/", prefix=True) for n in (flow.src, flow.dst)
        ):
            return False
        if self.port is not None and self.port not in (flow.src_port, flow.dst_port):
            return False
        if self.http_status and not _status_matches(flow.http_status, self.http_status):
            return False
        if self.http_path and (flow.type != "http" or not re.search(self.http_path, flow.http_path)):
            return False
        if self.fqdn and not _fqdn_matches(flow, self.fqdn):
            return False
        return not self.labels or _labels_match(flow, self.labels, names)


def _status_matches(status: int | None, want: str) -> bool:
    if status is None:
        return False
    if want.endswith("+"):
        return str(status).startswith(want[:-1])
    return str(status) == want


def _fqdn_matches(flow: Flow, pattern: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    candidates = [flow.dns_qname, flow.src, flow.dst, flow.http_host.split(":")[0]]
    return any(c and fnmatch.fnmatchcase(c.lower().rstrip("."), pattern) for c in candidates)


def _labels_match(flow: Flow, wanted: tuple[str, ...], names: Names | None) -> bool:
    if names is None:
        return False
    for endpoint in (flow.src, flow.dst):
        labels = names.labels.get(endpoint)
        if labels is None:
            continue
        ok = True
        for item in wanted:
            k, eq, v = item.partition("=")
            if k not in labels or (eq and labels[k] != v):
                ok = False
        if ok:
            return True
    return False


def select(
    flows: Iterable[Flow],
    *,
    pod: str | None = None,
    verdict: str | None = None,
    type: str | None = None,
) -> Iterator[Flow]:
    wanted = Filter(pod=pod, verdict=verdict, type=type)
    return (flow for flow in flows if wanted.matches(flow))


FLOW_LOG_MAX_BYTES = 64 << 20
"""Size at which a flow-log file is rotated to ``.1`` (one older file is kept)."""


class FlowLog:
    """Append-only JSON lines with size-capped rotation to ``.1``."""

    def __init__(self, path: Path, max_bytes: int = FLOW_LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fh: IO[str] | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()
        if self._fh.tell() >= self.max_bytes:
            self._fh.close()
            self._fh = None
            self.path.replace(self.path.with_name(self.path.name + ".1"))

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` with one write and one flush (busy writers batch their records)."""
        self.write_lines("".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records))

    def write_lines(self, text: str) -> None:
        """Append ``text``: JSON lines the caller encoded, each ending in a newline (one write, one
        flush; rotated like the rest)."""
        if not text:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(text)
        self._fh.flush()
        if self._fh.tell() >= self.max_bytes:
            self._fh.close()
            self._fh = None
            self.path.replace(self.path.with_name(self.path.name + ".1"))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
