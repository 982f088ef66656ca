"""The node's state, like ``cilium-dbg``: ``l7gate endpoint list``, ``l7gate identity list|get``,
``l7gate policy selectors``, ``l7gate policy get``.

Each view is computed from the inputs the agents enforce (the policy set, the endpoints file) and each
node's identity state file with the pure resolver (:mod:`l7.node_view`), plus what the agent's status
file (``agent-<node>.json``) reports: the generation and the applied hashes. ``--lab`` or
``--state-dir`` (files and Kubernetes mode) say where; ``--node`` picks one node.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from l7.cli import app, policy_app
from l7.cli.common import (
    EXIT_FAILURE,
    LabOpt,
    NodeSource,
    Output,
    OutputOpt,
    StateDirOpt,
    emit,
    node_source,
    usage_error,
)
from l7.errors import L7GateError
from l7.node_view import Inputs, NodeView, load_inputs, node_view

endpoint_app = typer.Typer(no_args_is_help=True, help="The endpoints the agents enforce policy on.")
identity_app = typer.Typer(no_args_is_help=True, help="Security identities and their labels.")
app.add_typer(endpoint_app, name="endpoint")
app.add_typer(identity_app, name="identity")

NodeOpt = Annotated[str | None, typer.Option("--node", help="Only this node (default: every node).")]
PoliciesOpt = Annotated[
    Path | None, typer.Option("--policies", help="With --state-dir: the policy set the agent enforces.")
]
EndpointsOpt = Annotated[
    Path | None, typer.Option("--endpoints", help="With --state-dir: the endpoints file the agent enforces.")
]


def _status(source: NodeSource, node: str) -> dict[str, Any]:
    try:
        data = json.loads((source.agent_dir / f"agent-{node}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _views(
    source: NodeSource, node: str | None, *, all_endpoints: bool = False
) -> list[tuple[NodeView, dict[str, Any]]]:
    nodes = source.nodes()
    if node is not None:
        if node not in nodes:
            usage_error(
                f"--node {node}: no agent status for it in {source.agent_dir} (nodes: {', '.join(nodes)})"
            )
        nodes = [node]
    if not nodes:
        usage_error(f"no agent status files in {source.agent_dir}")
    try:
        inputs: Inputs = load_inputs(source.policies, source.endpoints)
        return [
            (node_view(source.agent_dir, inputs, n, all_endpoints=all_endpoints), _status(source, n))
            for n in nodes
        ]
    except L7GateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: wide enough that labels are not cut
        console = Console(highlight=False, width=max(console.width, 160))
    console.print(table)


def _labels(labels: object) -> str:
    return "\n".join(str(label) for label in labels)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------- endpoint list
@endpoint_app.command("list")
def endpoint_list(  # noqa: PLR0917  (typer options)
    lab: LabOpt = None,
    state_dir: StateDirOpt = None,
    node: NodeOpt = None,
    policies: PoliciesOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Each node's endpoints: identity, labels, ingress/egress enforcement (default deny), the policies
    that select them, and the policy revision (the agent's generation and applied policy hash)."""
    source = node_source(lab, state_dir, policies, endpoints)
    rows: list[dict[str, Any]] = []
    for view, status in _views(source, node):
        for resolved in view.resolved.endpoints:
            ep = resolved.endpoint
            rows.append(
                {
                    "node": view.node,
                    "endpoint": ep.key,
                    "identity": ep.identity,
                    "labels": [str(label) for label in ep.labels],
                    "ips": list(ep.ips),
                    "ingress": "enabled" if resolved.ingress.enforced else "disabled",
                    "egress": "enabled" if resolved.egress.enforced else "disabled",
                    "ingress_policies": list(resolved.ingress.selected_by),
                    "egress_policies": list(resolved.egress.selected_by),
                    "revision": status.get("generation"),
                    "policies_hash": status.get("policies_hash"),
                }
            )
    if output is not Output.table:
        emit(rows, output)
        return
    _table(
        "endpoints",
        ["node", "endpoint", "identity", "labels", "ingress enforcement", "egress enforcement", "revision"],
        [
            [
                r["node"],
                r["endpoint"],
                str(r["identity"]),
                "\n".join(r["labels"]),
                r["ingress"],
                r["egress"],
                f"{r['revision']} ({r['policies_hash'] or '-'})",
            ]
            for r in rows
        ],
    )


# -------------------------------------------------------------------------------------- identities
def _identity_rows(views: list[tuple[NodeView, dict[str, Any]]]) -> list[dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for view, _ in views:
        for identity in view.resolved.identities:
            row = by_id.setdefault(
                identity.id,
                {"id": identity.id, "labels": [str(label) for label in identity.labels], "nodes": []},
            )
            row["nodes"].append(view.node)
    return [by_id[i] for i in sorted(by_id)]


@identity_app.command("list")
def identity_list(  # noqa: PLR0917  (typer options)
    lab: LabOpt = None,
    state_dir: StateDirOpt = None,
    node: NodeOpt = None,
    policies: PoliciesOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The security identities in use (endpoints, nodes, CIDRs, FQDN selections, reserved) and their
    labels."""
    rows = _identity_rows(_views(node_source(lab, state_dir, policies, endpoints), node))
    if output is not Output.table:
        emit(rows, output)
        return
    _table(
        "identities",
        ["id", "labels", "nodes"],
        [[str(r["id"]), "\n".join(r["labels"]), ", ".join(r["nodes"])] for r in rows],
    )


@identity_app.command("get")
def identity_get(  # noqa: PLR0917  (typer options)
    identity: Annotated[int, typer.Argument(help="The numeric identity.")],
    lab: LabOpt = None,
    state_dir: StateDirOpt = None,
    node: NodeOpt = None,
    policies: PoliciesOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """One identity's labels. Exit status 1 when no node uses it."""
    rows = [
        r
        for r in _identity_rows(_views(node_source(lab, state_dir, policies, endpoints), node))
        if r["id"] == identity
    ]
    if not rows:
        typer.echo(f"identity {identity}: not in use", err=True)
        raise typer.Exit(EXIT_FAILURE)
    if output is not Output.table:
        emit(rows[0], output)
        return
    _table(
        f"identity {identity}",
        ["id", "labels", "nodes"],
        [[str(identity), "\n".join(rows[0]["labels"]), ", ".join(rows[0]["nodes"])]],
    )


# --------------------------------------------------------------------------------- policy selectors
@policy_app.command("selectors")
def policy_selectors(  # noqa: PLR0917  (typer options)
    lab: LabOpt = None,
    state_dir: StateDirOpt = None,
    node: NodeOpt = None,
    policies: PoliciesOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Each peer selector of the applied policies and the identities it selects now (like
    ``cilium-dbg policy selectors``), with the rules that use it."""
    selectors: dict[tuple[str, str], dict[str, Any]] = {}
    for view, _ in _views(node_source(lab, state_dir, policies, endpoints), node):
        for resolved in view.resolved.endpoints:
            for direction in (resolved.ingress, resolved.egress):
                for entry in (*direction.allows, *direction.denies):
                    key = (view.node, entry.selector.key)
                    row = selectors.setdefault(
                        key,
                        {
                            "node": view.node,
                            "selector": entry.selector.key,
                            "identities": "all" if entry.identities is None else sorted(entry.identities),
                            "users": [],
                        },
                    )
                    user = str(entry.origin)
                    if user not in row["users"]:
                        row["users"].append(user)
    rows = [selectors[k] for k in sorted(selectors)]
    if output is not Output.table:
        emit(rows, output)
        return
    _table(
        "selectors",
        ["node", "selector", "identities", "users"],
        [
            [
                r["node"],
                r["selector"],
                r["identities"]
                if isinstance(r["identities"], str)
                else ", ".join(map(str, r["identities"])) or "none",
                "\n".join(r["users"]),
            ]
            for r in rows
        ],
    )


# -------------------------------------------------------------------------------------- policy get
@policy_app.command("get")
def policy_get(
    lab: LabOpt = None,
    state_dir: StateDirOpt = None,
    policies: PoliciesOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The policy set the agents watch: its content hash, each agent's applied hash, and every policy
    with its file and the sha256 of the file. Exit status 1 when the set does not validate."""
    from l7.agent.watch import content_hash
    from l7.policy.documents import load_paths

    source = node_source(lab, state_dir, policies, None)
    if source.policies is None:
        usage_error("the policy set is not known: give --policies")
    path = source.policies
    result = load_paths([path]) if path.exists() else None
    statuses = {n: _status(source, n) for n in source.nodes()}
    agents = {n: st.get("policies_hash") for n, st in statuses.items()}
    file_hashes: dict[str, str] = {}
    items: list[dict[str, Any]] = []
    for policy in result.policies if result is not None else ():
        if policy.source not in file_hashes:
            file_hashes[policy.source] = hashlib.sha256(Path(policy.source).read_bytes()).hexdigest()[:16]
        items.append(
            {
                "policy": policy.key,
                "source": policy.source,
                "document": policy.index,
                "rules": len(policy.rules),
                "file_sha256": file_hashes[policy.source],
                # rules a node refuses although it applied the policy (e.g. a TLS secret missing)
                "refused": [
                    {"node": n, "path": p.get("path"), "message": p.get("message")}
                    for n, st in statuses.items()
                    for p in st.get("policy_errors") or []
                    if isinstance(p, dict) and p.get("policy") == policy.key
                ],
            }
        )
    errors = [str(e) for e in result.errors] if result is not None else []
    data: dict[str, Any] = {
        "path": str(path.resolve()) if path.exists() else str(path),
        "hash": content_hash(path) if path.exists() else None,
        "applied": agents,
        "policies": items,
        "errors": errors,
    }
    if output is not Output.table:
        emit(data, output)
    else:
        console = Console(highlight=False)
        console.print(f"policy set {data['path']} (hash {data['hash']})", soft_wrap=True)
        for n, applied in agents.items():
            mark = "" if applied == data["hash"] else "  [yellow](not the current set)[/yellow]"
            console.print(f"  agent {n}: applied {applied}{mark}", soft_wrap=True)
        _table(
            "policies",
            ["policy", "file", "document", "rules", "file sha256"],
            [
                [i["policy"], i["source"], str(i["document"]), str(i["rules"]), i["file_sha256"]]
                for i in items
            ],
        )
        for i in items:
            for r in i["refused"]:
                line = f"{i['policy']} {r['path']}: {r['message']}"
                console.print(f"[red]refused[/red] on {r['node']}: {escape(line)}", soft_wrap=True)
        for e in errors:
            console.print(f"[red]error[/red] {e}", soft_wrap=True, markup=True)
    if errors:
        raise typer.Exit(EXIT_FAILURE)
