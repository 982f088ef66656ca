"""Flow records: the three flow-log files of a node agent, read and normalised into one :class:`Flow`.

::

    <state-dir>/flows-<node>-l3l4.jsonl   datapath events (l7.agent.flows writes them)  ─┐
    <state-dir>/flows-<node>-http.jsonl   Envoy's JSON access log (xds.translate fields) ─┼─► parse_* ─► Flow
    <state-dir>/flows-<node>-dns.jsonl    the DNS proxy's query events                   ─┘        │
                                                                                                   ▼
    endpoints file (pods, nodes, world names) + DNS answers (ip → qname) ──► Names ──► Flow.src/dst names

Every parser is a pure function of one JSON object (malformed lines are skipped by the reader, never
fatal). :class:`FlowReader` reads all files of a state directory, follows them (``follow``) across
size-capped rotation (``.1``), and hands out flows in time order.
"""

from __future__ import annotations

import datetime as dt
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

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dns_ips"] = list(self.dns_ips)
        return {k: v for k, v in out.items() if v not in ("", None, [])}

    def touches(self, pod: str) -> bool:
        """Whether ``pod`` ("name" or "ns/name") is the source or the destination."""
        for name in (self.src, self.dst):
            if name == pod or ("/" not in pod and name.endswith(f"/{pod}")):
                return True
        return False


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
    )


def _envoy_time(value: object) -> float:
    text = str(value or "")
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def parse_http(obj: Mapping[str, Any], node: str) -> Flow:
    """One line of Envoy's access log (fields: ``xds.translate.ACCESS_LOG_FIELDS``). The listener is
    transparent, so ``downstream_local`` is the original destination. A request answered by a ``deny``
    route (Cilium's 403 ``Access denied``) is ``denied``."""
    route = str(obj.get("route") or "")
    denied = route.startswith("deny")
    audited = route == "audit"  # xds.translate.AUDIT_ROUTE: no rule allows it, let through in audit mode
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
        if endpoints:
            for ep in endpoints.get("endpoints") or ():
                for ip in ep.get("ips") or ():
                    self.static[_norm(ip)] = f"{ep.get('namespace', 'default')}/{ep.get('name')}"
            for node in endpoints.get("nodes") or ():
                for ip in node.get("ips") or ():
                    self.static[_norm(ip)] = f"node:{node.get('name')}"
            for name, ips in (endpoints.get("fqdns") or {}).items():
                for ip in ips:
                    self.static.setdefault(_norm(ip), str(name).rstrip("."))

    @classmethod
    def load(cls, path: Path) -> Names:
        try:
            return cls(json.loads(path.read_text()))
        except (OSError, ValueError):
            return cls()

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


def select(
    flows: Iterable[Flow],
    *,
    pod: str | None = None,
    verdict: str | None = None,
    type: str | None = None,
) -> Iterator[Flow]:
    for flow in flows:
        if pod and not flow.touches(pod):
            continue
        if verdict and flow.verdict != verdict:
            continue
        if type and flow.type != type:
            continue
        yield flow


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

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
