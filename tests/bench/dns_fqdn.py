"""toFQDNs: lookup-to-allowed latency (an allowed answer arrives at the proxy → its IPs are in the
ipcache and the answer may be released) and first connections, in a real lab with the node agent.

Lab (unique name ``dxb<pid>``): one node, kube-dns (dnsmasq), a client pod, the "fresh" world host that
answers on a whole /21 (tests/agent/fqdn_helpers.py); dnsmasq serves ``h<i>.fresh.test`` → the i-th
address. The client runs N lookups with a connection right after each answer; the agent's DNS service
times each answer from arrival to map written (its status: ``lookup_to_allowed_ms``).

    .venv/bin/python -m tests.bench.dns_fqdn [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.common import Figure, Options

NAME = "dns_fqdn"
LOOKUPS = 1500
MAX_P99_MS = 1.0


def topology(count: int) -> dict[str, Any]:
    from tests.agent.fqdn_helpers import FRESH_V4, fresh_records

    return {
        "description": "l7gate bench: toFQDNs lookup-to-allowed",
        "nodes": [{"name": "n1"}],
        "pods": [{"name": "client", "labels": {"app": "client"}}],
        "dns": {"ttl": 300, "records": fresh_records(count)},
        "world": [{"name": "fresh", "ipv4": [FRESH_V4], "names": ["fresh.test"]}],
    }


def measure(opts: Options) -> dict[str, Any]:
    from l7.lab import Lab, down
    from l7.lab.topology import parse_topology
    from tests.agent import fqdn_helpers as h

    if os.geteuid() != 0:
        raise RuntimeError("needs root (lab)")
    count = 300 if opts.quick else LOOKUPS
    name = f"dxb{os.getpid() % 100000}"
    server = None
    try:
        lab = Lab.up(parse_topology(topology(count), "<bench dns_fqdn>"), name)
        server = h.start_anyip(lab)
        policy = h.cnp(
            "fresh",
            "default",
            {
                "endpointSelector": {"matchLabels": {"app": "client"}},
                "egress": [
                    h.dns_to("kube-dns"),
                    {
                        "toFQDNs": [{"matchPattern": "*.fresh.test"}],
                        "toPorts": [{"ports": [{"port": "8443"}]}],
                    },
                ],
            },
        )
        with tempfile.TemporaryDirectory() as tmp:
            h.apply(name, Path(tmp), policy)
        started = time.monotonic()
        client = h.python(
            lab, "client", h.FIRST_CONNECTION, str(count), "h{i}.fresh.test.", "8443", timeout=600
        )
        seconds = time.monotonic() - started
        time.sleep(1.0)  # the agent writes its status twice a second
        service = h.agent_status(lab, "n1")["services"]["dns"]
        return {"lookups": count, "client": client, "seconds": round(seconds, 3), "service": service}
    finally:
        if server is not None:
            h.stop(server)
        down(name)


def run(opts: Options) -> list[Figure]:
    raw = measure(opts)
    lat = raw["service"]["lookup_to_allowed_ms"]
    client = raw["client"]
    return [
        Figure(
            name="toFQDNs lookup-to-allowed latency p99 (answer at the proxy → ipcache written)",
            value=lat["p99"],
            unit="ms",
            target=f"<= {MAX_P99_MS:g} ms",
            met=lat["p99"] is not None and lat["p99"] <= MAX_P99_MS,
            details={**lat, "fast": raw["service"]["fast"], "slow": raw["service"]["slow"]},
        ),
        Figure(
            name=f"toFQDNs first connections failed ({raw['lookups']} lookups of fresh addresses)",
            value=client["failed"],
            unit="connections",
            target="0",
            met=client["failed"] == 0 and client["ok"] == raw["lookups"],
            details={"client": client, "lookups_per_second": round(raw["lookups"] / client["seconds"], 1)},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(Options(quick=args.quick)), indent=2))


if __name__ == "__main__":
    main()
