"""``l7gate policy trace``: which rule allows or denies one flow or request, offline.

Exit status: 0 when the flow is allowed, 1 when it is denied or the policies do not validate, 2 on usage
or input errors (a missing file, an unknown endpoint, a malformed port).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from l7.cli import policy_app
from l7.cli.common import EXIT_FAILURE, EXIT_OK, Output, OutputOpt, emit
from l7.endpoints import EndpointsError, load_endpoints
from l7.policy.documents import PolicySourceError, load_paths
from l7.trace import HTTPRequest, TraceError, parse_header_option, parse_port, trace


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@policy_app.command("trace")
def trace_command(  # noqa: PLR0917
    policies: Annotated[
        list[Path],
        typer.Option(
            "--policies",
            metavar="PATH",
            help="A policy file or directory; repeatable for several paths: "
            "--policies a.yaml --policies dir/.",
        ),
    ],
    endpoints: Annotated[Path, typer.Option("--endpoints", help="The endpoints file (YAML).")],
    source: Annotated[str, typer.Option("--from", help="Source endpoint: NAME or NAMESPACE/NAME.")],
    destination: Annotated[
        str,
        typer.Option(
            "--to",
            help="Destination: endpoint (NAME or NS/NAME), node name, SERVICE (NAME or NS/NAME), IP, or DNS "
            "name (dotted, or listed under fqdns: in the endpoints file).",
        ),
    ],
    port: Annotated[str, typer.Option("--port", help="N/PROTO, e.g. 80/TCP or 53/UDP.")],
    http: Annotated[
        tuple[str, str] | None, typer.Option("--http", help="Evaluate an HTTP request: METHOD PATH.")
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option("-H", "--header", help="Request header 'Name: value' (repeatable).")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Host header of the HTTP request.")] = None,
    dns: Annotated[str | None, typer.Option("--dns", help="Evaluate a DNS query for NAME.")] = None,
    sni: Annotated[
        str | None,
        typer.Option(
            "--sni",
            help="The TLS server name the client sends (serverNames); on an intercepting port the "
            "--http request's host is used when not given.",
        ),
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="The node whose view to take (default: the source's).")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Trace a flow from an endpoint: the source's egress verdict, the destination's ingress verdict
    (when it is an endpoint) and, for redirected flows, the HTTP request or DNS query."""
    try:
        number, protocol = parse_port(port)
        headers = tuple(parse_header_option(h) for h in header or ())
        request = None
        if http is not None:
            host_header = host or next((v for n, v in headers if n.lower() == "host"), None)
            request = HTTPRequest(http[0], http[1], host_header or destination, headers)
        loaded = load_paths(policies)
        if loaded.errors:
            for error in loaded.errors:
                typer.echo(str(error), err=True)
            typer.echo(f"error: {len(loaded.errors)} policy error(s)", err=True)
            raise typer.Exit(EXIT_FAILURE)
        topology = load_endpoints(endpoints)
        result = trace(
            loaded.policies,
            topology,
            source,
            destination,
            number,
            protocol,
            http=request,
            dns=dns,
            sni=sni,
            node=node,
        )
    except (TraceError, EndpointsError, PolicySourceError) as exc:
        raise _fail(str(exc)) from exc
    if output is Output.table:
        typer.echo(result.to_text())
    else:
        emit(result.to_json(), output)
    raise typer.Exit(EXIT_OK if result.allowed else EXIT_FAILURE)
