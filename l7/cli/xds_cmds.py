"""``l7gate xds serve``: the xDS server alone, against a policy directory and an endpoints file.

Any xDS client (a real Envoy, a conformance test) can be pointed at it. It resolves the policies for
one node's endpoints (``--node``; every endpoint without it), gives each HTTP rule-set union a proxy
port like the agent does (``l7.plan``), translates and serves the snapshot under ``--node-id``,
and rebuilds it when the files change (polled every 0.5 s; an invalid change keeps the last snapshot).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from l7.cli import app

if TYPE_CHECKING:
    from l7xds.translate import RuleSet

xds_app = typer.Typer(no_args_is_help=True, help="The xDS server (Envoy's configuration).")
app.add_typer(xds_app, name="xds")
log = logging.getLogger("l7gate.xds")

POLL_INTERVAL = 0.5


@dataclass(frozen=True)
class Inputs:
    policies: Path
    endpoints: Path
    node: str | None


def http_ports_of_files(inputs: Inputs) -> dict[int, RuleSet]:
    """Proxy port → HTTP rules for the inputs (raises L7GateError on invalid files)."""
    from l7.agent.http_redirects import http_ports
    from l7.agent.services import AppliedView
    from l7.endpoints import build_topology, load_endpoints
    from l7.errors import L7GateError
    from l7.identity import IdentityAllocator
    from l7.plan import ProxyPorts, l7_unions
    from l7.policy.documents import load_paths
    from l7.resolve.engine import Engine

    result = load_paths([inputs.policies])
    if result.errors:
        raise L7GateError("invalid policies:\n  " + "\n  ".join(str(e) for e in result.errors))
    file = load_endpoints(inputs.endpoints)
    allocator = IdentityAllocator()
    engine = Engine(allocator, inputs.node)
    engine.set_policies(result.policies)
    engine.set_topology(build_topology(file, allocator))
    resolved = engine.snapshot()
    unions = l7_unions(resolved)
    ports = ProxyPorts()
    ports.assign(unions)
    view = AppliedView(1, resolved.endpoints, file, unions, ports.ports)
    return http_ports(view)


async def serve(
    listen: str, inputs: Inputs, node_id: str, access_log: str | None, once: bool = False
) -> None:
    from bpf.maps import MARK_FROM_PROXY
    from l7.agent import watch
    from l7.errors import L7GateError
    from l7xds.cache import SnapshotCache
    from l7xds.observer import XdsStats
    from l7xds.server import XdsServer
    from l7xds.translate import ProxySettings, Translator

    cache = SnapshotCache()
    server = XdsServer(cache, XdsStats())
    translator = Translator()
    settings = ProxySettings(upstream_mark=MARK_FROM_PROXY, access_log_path=access_log)
    address = await server.start(listen)
    print(f"xDS server listening on {address} (node id {node_id})", flush=True)
    seen: tuple[object, ...] | None = None
    try:
        while True:
            sig = watch.signature([inputs.policies.resolve(), inputs.endpoints])
            if sig != seen:
                seen = sig
                try:
                    ports = http_ports_of_files(inputs)
                    snapshot = translator.snapshot(ports, settings)
                    cache.set_snapshot(node_id, snapshot)
                except L7GateError as exc:
                    log.error("%s (the last snapshot stays)", exc)
                else:
                    listeners = ", ".join(str(p) for p in sorted(ports)) or "none"
                    print(f"snapshot published: proxy ports {listeners}", flush=True)
            if once:
                return
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        await server.stop(0)


@xds_app.command("serve")
def serve_cmd(
    *,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT or unix:PATH.")],
    policies: Annotated[Path, typer.Option("--policies", help="Policy directory or file.")],
    endpoints: Annotated[Path, typer.Option("--endpoints", help="Endpoints file (see l7.endpoints).")],
    node_id: Annotated[
        str | None, typer.Option("--node-id", help="Envoy's node id (default: the node).")
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="Resolve for this node's endpoints (default: all).")
    ] = None,
    access_log: Annotated[
        str | None, typer.Option("--access-log", help="Envoy's JSON access log file (default: stdout).")
    ] = None,
) -> None:
    """Serve the HTTP policy of the files over ADS (SotW and Delta) until interrupted."""
    from l7.cli.common import usage_error
    from l7.errors import L7GateError

    for path, option in ((policies, "--policies"), (endpoints, "--endpoints")):
        if not path.exists():
            usage_error(f"{option} {path}: no such file or directory")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    inputs = Inputs(policies, endpoints, node)
    try:
        asyncio.run(serve(listen, inputs, node_id or node or "l7gate", access_log))
    except KeyboardInterrupt:
        pass
    except L7GateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
