"""``l7gate agent``: the node agent (policies + endpoints → datapath), from a lab, from files, or from a
Kubernetes cluster (``--kubernetes``: the controller of :mod:`l7.k8s.controller` writes the files-mode
inputs under ``<state-dir>/k8s/`` and the same agent loop enforces them). ``l7gate agent-probe`` checks
the agent from its status file; ``l7gate socket-keeper`` runs the DNS socket keeper (its own DaemonSet)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from l7.cli import app
from l7.cli.common import usage_error
from l7.logs import configure as configure_logs

DEFAULT_STATE_DIR = Path("/run/l7gate/agent")
K8S_SYNC_TIMEOUT = 120.0


@app.command("agent")
def agent_cmd(  # noqa: PLR0917  (typer options)
    node: Annotated[str, typer.Option("--node", help="The node this agent runs for.")],
    lab: Annotated[
        str | None, typer.Option("--lab", help="Take policies and endpoints from this lab.")
    ] = None,
    policies: Annotated[
        Path | None, typer.Option("--policies", help="Policy directory or file (watched).")
    ] = None,
    endpoints: Annotated[Path | None, typer.Option("--endpoints", help="Endpoints file (watched).")] = None,
    kubernetes: Annotated[
        bool,
        typer.Option("--kubernetes", help="Take policies and endpoints from the cluster (list+watch)."),
    ] = False,
    cilium_policies: Annotated[
        bool,
        typer.Option(
            "--cilium-policies",
            envvar="L7GATE_CILIUM_POLICIES",
            help="Kubernetes mode: also enforce cilium.io/v2 CNP/CCNP (migration).",
        ),
    ] = False,
    kubeconfig: Annotated[
        Path | None,
        typer.Option("--kubeconfig", help="Kubernetes mode: kubeconfig (default: in-cluster, then ~/.kube)."),
    ] = None,
    secrets_namespace: Annotated[
        str,
        typer.Option(
            "--secrets-namespace",
            envvar="L7GATE_SECRETS_NAMESPACE",
            help="Kubernetes mode: the only namespace TLS secrets (terminatingTLS, originatingTLS) come from",
        ),
    ] = "l7gate-secrets",
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", envvar="L7GATE_STATE_DIR", help="Identity state and agent-<node>.json status."
        ),
    ] = None,
    uplink: Annotated[
        str | None, typer.Option("--uplink", help="Files mode: the node's uplink device to attach.")
    ] = None,
    datapath_name: Annotated[
        str | None,
        typer.Option("--datapath-name", help="Files mode: pin directory name (default: the node name)."),
    ] = None,
    services: Annotated[
        str,
        typer.Option(
            "--services",
            envvar="L7GATE_SERVICES",
            help="Files/Kubernetes mode: node services, comma separated (envoy,dns,...).",
        ),
    ] = "",
    audit: Annotated[
        bool,
        typer.Option(
            "--audit",
            envvar="L7GATE_AUDIT",
            help="Audit mode for every endpoint: would-be drops and 403s pass and are reported as audit.",
        ),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option("--log-format", envvar="L7GATE_LOG_FORMAT", help="text or json (one object per line)."),
    ] = "text",
    metrics_address: Annotated[
        str | None,
        typer.Option(
            "--metrics-address",
            envvar="L7GATE_METRICS_ADDR",
            help="host:port of /metrics, /healthz and /readyz (127.0.0.1:9962; Kubernetes: 0.0.0.0:9962).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the node agent until SIGTERM (run it in the node's netns: nsenter --net=/run/netns/NODE).

    Invalid policies or endpoints are logged with their field paths and the last good set stays applied.
    On exit programs and maps stay in place: enforcement continues while the agent is down."""
    from l7.agent.fqdn import DnsSettings
    from l7.agent.metrics import MetricsAddressError, parse_addr
    from l7.agent.node import METRICS_ADDRESS, AgentConfig, AgentError, route_interfaces, run_agent

    try:
        configure_logs(f"agent[{node}]", verbose=verbose, fmt=log_format)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for path, option in ((policies, "--policies"), (endpoints, "--endpoints")):
        if path is not None and not path.exists():
            typer.echo(f"error: {option} {path}: no such file or directory", err=True)
            raise typer.Exit(2)
    if os.geteuid() != 0:
        typer.echo("error: the agent needs root (BPF, tc)", err=True)
        raise typer.Exit(2)
    modes = sum((lab is not None, policies is not None or endpoints is not None, kubernetes))
    if modes > 1:
        typer.echo("error: give one of --lab, --policies/--endpoints, --kubernetes", err=True)
        raise typer.Exit(2)
    service_names = tuple(s.strip() for s in services.split(",") if s.strip())
    try:
        parse_addr(metrics_address or METRICS_ADDRESS)
    except MetricsAddressError as exc:
        typer.echo(f"error: --metrics-address: {exc}", err=True)
        raise typer.Exit(2) from None
    if lab is not None:
        from l7.lab import LabError  # the lab modules only for a lab agent (~0.2 s of imports)
        from l7.lab.agents import lab_config

        try:
            cfg = lab_config(lab, node, state_dir)
        except (LabError, AgentError) as exc:  # no such lab or node: missing input
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        cfg = dataclasses.replace(cfg, metrics_address=metrics_address or cfg.metrics_address)
        raise typer.Exit(run_agent(dataclasses.replace(cfg, audit=audit or cfg.audit)))
    state = (state_dir or DEFAULT_STATE_DIR).resolve()
    if kubernetes:
        raise typer.Exit(
            _run_kubernetes(
                node,
                state,
                kubeconfig,
                cilium_policies,
                uplink,
                datapath_name,
                service_names,
                audit,
                metrics_address or METRICS_ADDRESS,
                secrets_namespace=secrets_namespace,
            )
        )
    if policies is None or endpoints is None:
        typer.echo(
            "error: give --lab NAME, --kubernetes, or both --policies DIR and --endpoints FILE", err=True
        )
        raise typer.Exit(2)
    cfg = AgentConfig(
        node=node,
        policies=policies.resolve(),
        endpoints=endpoints.resolve(),
        state_dir=state,
        datapath_name=datapath_name or node,
        interfaces=route_interfaces(node),
        uplink=uplink,
        services=service_names,
        audit=audit,
        dns=DnsSettings.from_env(),
        metrics_address=metrics_address or METRICS_ADDRESS,
    )
    raise typer.Exit(run_agent(cfg))


def _run_kubernetes(  # noqa: PLR0917
    node: str,
    state: Path,
    kubeconfig: Path | None,
    cilium: bool,
    uplink: str | None,
    datapath_name: str | None,
    services: tuple[str, ...],
    audit: bool = False,
    metrics_address: str = "127.0.0.1:9962",
    *,
    secrets_namespace: str = "l7gate-secrets",
) -> int:
    """The controller (threads) writes the inputs; the agent loop runs on this thread until SIGTERM."""
    from l7.agent import watch
    from l7.agent.fqdn import DnsSettings
    from l7.agent.node import AgentConfig, route_interfaces, run_agent
    from l7.k8s.controller import Controller, ControllerConfig
    from l7.k8s.errors import KubeError
    from l7.kube import KubeClient

    log = logging.getLogger("l7gate.agent")
    ccfg = ControllerConfig(
        node=node,
        directory=state / "k8s",
        agent_status=watch.status_path(state, node),
        cilium=cilium,
        secrets_dir=state / "secrets",  # where the agent's Envoy service reads them (l7.agent.secrets)
        secrets_namespace=secrets_namespace,
    )
    try:
        client = KubeClient.from_config(kubeconfig)
    except KubeError as exc:
        log.error("%s", exc)
        return 1
    controller = Controller(client, ccfg)
    controller.start()
    try:
        if not controller.wait_written(K8S_SYNC_TIMEOUT):
            errors = {str(r): i.last_error for r, i in controller.informers.items() if i.last_error}
            log.error("no initial sync with the API server in %.0fs: %s", K8S_SYNC_TIMEOUT, errors)
            return 1
        cfg = AgentConfig(
            node=node,
            policies=ccfg.policies,
            endpoints=ccfg.endpoints,
            state_dir=state,
            datapath_name=datapath_name or node,
            interfaces=route_interfaces(node),
            uplink=uplink,
            services=services,
            audit=audit,
            dns=DnsSettings.from_env(),
            metrics_address=metrics_address,
        )
        return run_agent(cfg)
    finally:
        controller.stop()
        client.close()


@app.command("agent-probe")
def agent_probe_cmd(
    node: Annotated[str, typer.Option("--node", help="The node whose agent to check.")],
    state_dir: Annotated[Path, typer.Option("--state-dir")] = DEFAULT_STATE_DIR,
    ready: Annotated[
        bool, typer.Option("--ready", help="Readiness (applied, no errors, cluster synced), not liveness.")
    ] = False,
) -> None:
    """Exit 0 when the node's agent is alive (``--ready``: ready), 1 when not; 2 when the state directory
    does not exist. For DaemonSet probes."""
    from l7.agent import watch

    if not state_dir.is_dir():
        usage_error(f"--state-dir {state_dir}: no such directory")
    st = watch.read_status(watch.status_path(state_dir, node))
    problem = None
    if st is None:
        problem = "no status file"
    elif st.get("state") == "stopped":
        problem = "stopped"
    else:
        try:
            os.kill(int(st.get("pid") or 0), 0)
        except (OSError, ValueError):
            problem = f"agent pid {st.get('pid')} not running"
    if problem is None and ready:
        controller = watch.read_status(state_dir / "k8s" / f"controller-{node}.json")
        if not st or not st.get("ready"):
            problem = "not ready"
        elif st.get("errors"):
            problem = f"{len(st['errors'])} input error(s)"
        elif controller is not None and not controller.get("synced"):
            problem = "not synced with the API server"
    if problem is not None:
        typer.echo(f"agent {node}: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"agent {node}: {'ready' if ready else 'alive'}")


@app.command("socket-keeper")
def socket_keeper_cmd(
    node: Annotated[str, typer.Option("--node", help="The node whose agent's DNS sockets to keep.")],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", envvar="L7GATE_STATE_DIR", help="The agent's state directory.")
    ] = DEFAULT_STATE_DIR,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait",
            help="Do not keep anything: exit 0 once a keeper answers, 1 after this many seconds.",
            metavar="SECONDS",
        ),
    ] = None,
) -> None:
    """Run the node's DNS socket keeper in the foreground (the l7gate-dns-keeper DaemonSet) until SIGTERM.

    The agent hands its DNS listening sockets to the keeper at ``<state-dir>/dns-sockets-<node>.sock`` and
    takes them back after a restart, so queries sent while the agent is away wait in the sockets. If a
    keeper already answers there (one the agent started itself), this one waits until it is gone."""
    from l7.agent.dns import keeper_path
    from l7.agent.socket_keeper import KeeperClient, serve

    configure_logs(f"socket-keeper[{node}]", verbose=False, fmt="text")
    log = logging.getLogger("l7gate.socket_keeper")
    path = keeper_path(state_dir, node)
    client = KeeperClient(path, timeout=0.5)
    if wait is not None:
        deadline = time.monotonic() + wait
        while client.alive() is None:
            if time.monotonic() > deadline:
                typer.echo(f"no socket keeper answers at {path} after {wait:.0f}s", err=True)
                raise typer.Exit(1)
            time.sleep(0.2)  # polling another process's socket: nothing to wait on
        typer.echo(f"socket keeper at {path}: pid {client.alive()}")
        return
    announced = False
    while (pid := client.alive()) is not None:
        if not announced:
            log.info("a keeper (pid %d) answers at %s: waiting until it is gone", pid, path)
            announced = True
        time.sleep(0.2)  # polling another process's socket: nothing to wait on
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("keeping the DNS sockets of %s at %s", node, path)
    serve(path)
