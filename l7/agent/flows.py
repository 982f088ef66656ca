"""The node agent's flow log of datapath events: ``<state-dir>/flows-<node>-l3l4.jsonl``.

A thread polls the datapath's ring buffer (``poll_events``: drops always; policy verdicts of new flows,
which this service switches on) and appends one JSON object per event, flushed per line, rotated to
``.1`` (:class:`l7.flows.FlowLog`). ``l7.flows.parse_l3l4`` reads the lines back. Event times are the kernel's
monotonic clock, converted to wall time here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from l7.flows import FlowLog, flow_path

if TYPE_CHECKING:
    from bpf.maps import Event
    from l7.agent.node import AgentConfig
    from l7.agent.services import AppliedView, ServiceHost

log = logging.getLogger("l7gate.agent.flows")

POLL_SECONDS = 0.2


def event_record(ev: Event, wall_offset: float) -> dict[str, Any]:
    """One datapath event as a flow-log line (``wall_offset``: wall time minus monotonic time)."""
    return {
        "time": round(ev.ts_ns / 1e9 + wall_offset, 6),
        "type": ev.type.name.lower(),
        "hook": ev.hook.name.lower(),
        "verdict": ev.verdict.name.lower(),
        "reason": ev.reason.name,
        "proto": ev.proto,
        "src": str(ev.src) if ev.src is not None else None,
        "dst": str(ev.dst) if ev.dst is not None else None,
        "sport": ev.sport,
        "dport": ev.dport,
        "ifindex": ev.ifindex,
        "endpoint_id": ev.endpoint_id,
        "src_identity": ev.src_identity,
        "dst_identity": ev.dst_identity,
        "proxy_port": ev.proxy_port,
    }


class FlowLogService:
    """NodeService ``flows``: datapath events → the l3l4 flow log, counted for status and metrics."""

    name = "flows"

    def __init__(self, cfg: AgentConfig) -> None:
        self.path = flow_path(cfg.state_dir, cfg.node, "l3l4")
        self.log = FlowLog(self.path)
        self.counts: Counter[tuple[str, str]] = Counter()  # (verdict, reason) → events
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._host: ServiceHost | None = None

    def start(self, host: ServiceHost) -> None:
        self._host = host
        dp = host.datapath
        poll = getattr(dp, "poll_events", None)
        if poll is None:  # a datapath without events (tests' fakes): nothing to log
            return
        set_verdicts = getattr(dp, "set_verdict_events", None)
        if set_verdicts is not None:
            set_verdicts(True)
        self._thread = threading.Thread(target=self._run, args=(poll,), name="flows", daemon=True)
        self._thread.start()

    def _run(self, poll: Any) -> None:
        offset = time.time() - time.monotonic()
        while not self._stop.is_set():
            try:
                events = poll(POLL_SECONDS)
                for ev in events:
                    record = event_record(ev, offset)
                    with self._lock:
                        self.counts[(record["verdict"], record["reason"])] += 1
                    self.log.write(record)
            except Exception:
                self.errors += 1
                log.exception("polling datapath events")
                self._stop.wait(1.0)

    def prepare(self, view: AppliedView) -> None:
        pass

    def commit(self, view: AppliedView) -> None:
        pass

    def status(self) -> dict[str, Any]:
        drops: Counter[str] = Counter()
        verdicts: Counter[str] = Counter()
        with self._lock:
            counts = dict(self.counts)
        for (verdict, reason), n in counts.items():
            verdicts[verdict] += n
            if verdict == "drop":
                drops[reason] += n
        return {
            "path": str(self.path),
            "running": self._thread is not None and self._thread.is_alive(),
            "events": sum(counts.values()),
            "verdicts": dict(sorted(verdicts.items())),
            "drops": dict(sorted(drops.items())),
            "errors": self.errors,
        }

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.log.close()
