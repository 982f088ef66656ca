"""The controller of one node: informers → the agent's files-mode inputs → status back to the objects.

Threads only (the Kubernetes client is synchronous): one per informer and one reconciler. The reconciler
wakes on a store change (after a short debounce) or every ``poll`` seconds (to read the agent's status)
and then, in one pass:

1. translates and validates every policy object (:mod:`l7.k8s.policies`); the valid ones become the
   policy set (:class:`l7.k8s.output.PolicySet`), remembered by content hash;
2. writes the endpoints file from pods, namespaces, nodes and services (:mod:`l7.k8s.endpoints`);
3. reads the agent's status (``agent-<node>.json``): the policy set hash it *applied* says which
   policy contents this node enforces; errors for the set it *saw* say why not;
4. patches the status of each of our objects whose status differs from what it should say
   (:mod:`l7.k8s.status`), at most once per ``status_interval`` per object and ``status_rate`` per
   second overall; a 409 waits for the watch to bring the newer object.

Nothing is written before every informer has listed once (a half-known cluster would deny too much).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from l7.agent import watch
from l7.endpoints import EndpointsError, parse_endpoints
from l7.k8s import endpoints as k8s_endpoints
from l7.k8s import output
from l7.k8s import secrets as k8s_secrets
from l7.k8s.errors import Conflict, KubeError
from l7.k8s.informer import ClusterAPI, Informer, Store, key_of
from l7.k8s.policies import (
    CILIUM_RESOURCES,
    ENDPOINT_SLICES,
    NAMESPACES,
    NODES,
    PODS,
    POLICY_RESOURCES,
    SECRETS,
    SERVICES,
    STATUS_RESOURCES,
    FieldError,
    Resource,
    Translated,
    translate,
)
from l7.k8s.status import Counted, NodeEnforcement, desired_status, status_patch

log = logging.getLogger("l7gate.k8s")

HISTORY = 64  # policy sets remembered (hash → contents) to interpret the agent's applied hash


@dataclass(frozen=True)
class ControllerConfig:
    node: str
    directory: Path  # policies link, policies.d/ and endpoints.json go here
    agent_status: Path  # the agent's agent-<node>.json
    cilium: bool = False  # also cilium.io/v2 CNP/CCNP (migration)
    poll: float = 0.5
    debounce: float = 0.05
    status_interval: float = 1.0  # per object
    status_rate: float = 20.0  # patches per second, overall
    watch_timeout: int = 300
    backoff: tuple[float, float] = (0.2, 10.0)
    secret_refresh: float = 30.0  # referenced secrets are read again this often (they are not watched)
    secrets_dir: Path | None = None  # the agent's secrets directory (default: <directory>/secrets)
    secrets_namespace: str = k8s_secrets.DEFAULT_SECRETS_NAMESPACE  # the only one Secrets are read from

    @property
    def policies(self) -> Path:
        return self.directory / "policies"

    @property
    def endpoints(self) -> Path:
        return self.directory / "endpoints.json"

    @property
    def secrets(self) -> Path:
        return self.secrets_dir or self.directory / "secrets"

    @property
    def status_file(self) -> Path:
        return self.directory / f"controller-{self.node}.json"

    @property
    def counted_file(self) -> Path:
        """What this node counted itself as in each object's status (survives a controller restart)."""
        return self.directory / f"counted-{self.node}.json"


@dataclass
class ControllerStats:
    passes: int = 0
    policy_sets: int = 0
    endpoint_writes: int = 0
    patches: int = 0
    conflicts: int = 0
    patch_errors: int = 0
    invalid: int = 0
    last_errors: list[str] = field(default_factory=list)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    def __init__(
        self, api: ClusterAPI, cfg: ControllerConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.api = api
        self.cfg = cfg
        self.clock = clock
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self.store = Store(on_change=self._wake.set)
        self.policy_resources: tuple[Resource, ...] = POLICY_RESOURCES + (
            CILIUM_RESOURCES if cfg.cilium else ()
        )
        resources = (*self.policy_resources, PODS, NAMESPACES, NODES, SERVICES, ENDPOINT_SLICES)
        self.informers = {
            r: Informer(
                api,
                r,
                self.store,
                self.stop_event,
                watch_timeout=cfg.watch_timeout,
                backoff=cfg.backoff,
                optional=r in CILIUM_RESOURCES,
            )
            for r in resources
        }
        self.policy_set = output.PolicySet(cfg.directory)
        self.history: OrderedDict[str, dict[str, str]] = OrderedDict()  # set hash → {key: text digest}
        self.current: dict[str, Translated] = {}
        self.stats = ControllerStats()
        self.written = threading.Event()  # set once the first inputs were written
        self._next_patch: dict[tuple[Resource, tuple[str, str]], float] = {}
        self._tokens = cfg.status_rate
        self._tokens_at = clock()
        self._threads: list[threading.Thread] = []
        self._wake_at: float | None = None  # a throttled status patch is due then
        self._secrets: dict[tuple[str, str], dict[str, Any] | None] = {}  # lookup key → object read
        self._secrets_read_at = -1e9
        self._memo: dict[tuple[Resource, tuple[str, str]], tuple[object, Translated]] = {}
        self._translated: dict[str, tuple[Resource, dict[str, Any], Translated]] | None = None
        self._done_changes = -1  # store.changes at the last pass
        self._done_report: dict[str, Any] | None = None  # the agent's report at the last pass
        self._status_due = False  # a status write was throttled or conflicted: look again
        self._counted: dict[str, tuple[str, Counted]] = _load_counted(cfg.counted_file)

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.cfg.directory.mkdir(parents=True, exist_ok=True)
        for resource, informer in self.informers.items():
            t = threading.Thread(target=informer.run, name=f"informer-{resource.plural}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._run, name="reconciler", daemon=True)
        t.start()
        self._threads.append(t)

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers.values())

    def wait_written(self, timeout: float) -> bool:
        return self.written.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout if t.name == "reconciler" else 0.1)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            timeout = self.cfg.poll
            if self._wake_at is not None:
                timeout = max(0.0, min(timeout, self._wake_at - self.clock()))
                self._wake_at = None
            self._wake.wait(timeout)
            if self.stop_event.is_set():
                return
            if self._wake.is_set():
                self.stop_event.wait(self.cfg.debounce)  # let a burst of events land first
                self._wake.clear()
            try:
                self.reconcile()
            except Exception:  # the reconciler must survive a bad pass; the next pass retries
                log.exception("reconcile pass failed")

    # ------------------------------------------------------------------------------------ one pass
    def reconcile(self) -> None:
        """One pass. Inputs are rebuilt only when the store changed; statuses are looked at when the store
        or the agent's report changed, or a throttled/conflicting status write is still due."""
        if not self.synced():
            return
        changes = self.store.changes
        agent = watch.read_status(self.cfg.agent_status)
        report = (
            None if agent is None else {k: v for k, v in agent.items() if k not in ("updated", "services")}
        )
        # referenced Secrets are not watched: read again every secret_refresh (a Secret created or
        # rotated after the policy shows up then, even when nothing else in the cluster changed)
        secrets_due = (
            self._translated is not None and self.clock() - self._secrets_read_at > self.cfg.secret_refresh
        )
        if (
            changes == self._done_changes
            and report == self._done_report
            and not self._status_due
            and not secrets_due
        ):
            return
        self.stats.passes += 1
        if changes != self._done_changes or self._translated is None:
            self._translated = self._translate()
            self._write_policies(self._translated)
            self._write_secrets(self._translated)
            self._write_endpoints()
            self.written.set()
        elif secrets_due:
            self._write_secrets(self._translated)
        self._done_changes, self._done_report = changes, report
        self._status_due = False
        self._write_statuses(self._translated, agent)
        output.write_json(self.cfg.status_file, self.status())

    def _translate(self) -> dict[str, tuple[Resource, dict[str, Any], Translated]]:
        out: dict[str, tuple[Resource, dict[str, Any], Translated]] = {}
        memo: dict[tuple[Resource, tuple[str, str]], tuple[object, Translated]] = {}
        for resource in self.policy_resources:
            for obj in self.store.objects(resource):
                meta = obj.get("metadata") or {}
                version = (meta.get("uid"), meta.get("generation"))  # the spec changes with generation
                cached = self._memo.get((resource, key_of(obj)))
                if cached is not None and cached[0] == version and version[1]:
                    t = cached[1]
                else:
                    t = self._with_tls_errors(translate(resource, obj), obj)
                memo[(resource, key_of(obj))] = (version, t)
                out[t.key] = (resource, obj, t)
        self._memo = memo
        self.current = {k: v[2] for k, v in out.items()}
        self.stats.invalid = sum(1 for _, _, t in out.values() if t.errors)
        return out

    def _with_tls_errors(self, t: Translated, obj: Mapping[str, Any]) -> Translated:
        """A secret reference outside the secrets namespace makes the policy invalid (field path)."""
        refs = k8s_secrets.header_refs(obj) + k8s_secrets.tls_refs(obj)
        errors = k8s_secrets.ref_errors(refs, self.cfg.secrets_namespace)
        if not errors:
            return t
        extra = tuple(FieldError(path, message) for path, message in errors)
        return dataclasses.replace(t, errors=(*t.errors, *extra), text=None, secrets=())

    def _write_policies(self, translated: dict[str, tuple[Resource, dict[str, Any], Translated]]) -> None:
        files = {t.file: t.text for _, _, t in translated.values() if t.text is not None}
        digest, wrote = self.policy_set.write(files)
        if wrote:
            self.stats.policy_sets += 1
            log.info("policy set %s: %d valid policies", digest, len(files))
        self.history[digest] = {
            t.key: _digest(t.text) for _, _, t in translated.values() if t.text is not None
        }
        self.history.move_to_end(digest)
        while len(self.history) > HISTORY:
            self.history.popitem(last=False)

    def _write_secrets(self, translated: dict[str, tuple[Resource, dict[str, Any], Translated]]) -> None:
        """Read the referenced secrets (new references at once, all every ``secret_refresh`` seconds)."""
        refs = {ref for _, _, t in translated.values() for ref in t.secrets}
        valid = [obj for _, obj, t in translated.values() if t.text is not None]
        tls_refs = [ref for obj in valid for ref in k8s_secrets.tls_refs(obj)]
        wanted = {(self.cfg.secrets_namespace, name) for _, name in refs}
        wanted |= {(self.cfg.secrets_namespace, name) for _, _, name in tls_refs}
        stale = self.clock() - self._secrets_read_at > self.cfg.secret_refresh
        missing = wanted - set(self._secrets)
        if stale or missing:
            for namespace, name in sorted(wanted if stale else missing):
                try:
                    self._secrets[(namespace, name)] = self.api.get(SECRETS, namespace, name)
                except KubeError as exc:  # keep what was read before
                    log.warning("secret %s/%s: %s", namespace, name, exc)
            if stale:
                self._secrets_read_at = self.clock()
        self._secrets = {k: v for k, v in self._secrets.items() if k in wanted}
        output.write_secrets(
            self.cfg.secrets,
            k8s_secrets.secret_values(refs, self._secrets, self.cfg.secrets_namespace),
            k8s_secrets.tls_values(tls_refs, self.cfg.secrets_namespace, self._secrets),
        )

    def _write_endpoints(self) -> None:
        try:
            doc = k8s_endpoints.endpoints_document(
                self.store.objects(PODS),
                self.store.objects(NAMESPACES),
                self.store.objects(NODES),
                self.store.objects(SERVICES),
                self.store.objects(ENDPOINT_SLICES),
            )
            parse_endpoints(doc, "<kubernetes>")  # only a file the agent accepts is written
        except EndpointsError as exc:
            log.error("endpoints from the cluster are invalid (the last good file stays): %s", exc)
            self.stats.last_errors = [str(exc)]
            return
        if output.write_json(self.cfg.endpoints, doc):
            self.stats.endpoint_writes += 1
            log.info("endpoints: %d pods, %d nodes", len(doc["endpoints"]), len(doc["nodes"]))

    # ---------------------------------------------------------------------------------- enforcement
    def enforcement(self, t: Translated, agent: dict[str, Any] | None) -> NodeEnforcement:
        """What this node's agent (its status file's content) says about ``t`` (``enforced`` None:
        nothing new to say)."""
        if t.text is None or agent is None:
            return NodeEnforcement(None)
        applied = self.history.get(str(agent.get("policies_hash")))
        if agent.get("ready") and applied is not None and applied.get(t.key) == _digest(t.text):
            rejected = proxy_rejection(agent)
            if rejected is not None and has_http_rules(t.text):
                return NodeEnforcement(False, rejected)
            refused = policy_problems(agent, t.key)
            if refused:
                return NodeEnforcement(False, "agent: " + "; ".join(refused))
            return NodeEnforcement(True)
        errors = [str(e) for e in agent.get("errors") or []]
        if errors and agent.get("seen_policies_hash") == self.policy_set.digest:
            mine = [e for e in errors if t.file in e] or errors
            return NodeEnforcement(False, "agent: " + "; ".join(mine))
        return NodeEnforcement(None)

    def _known_nodes(self) -> set[str] | None:
        if not self.informers[NODES].synced.is_set():
            return None
        return {key_of(n)[1] for n in self.store.objects(NODES)}

    def _write_statuses(
        self, translated: dict[str, tuple[Resource, dict[str, Any], Translated]], agent: dict[str, Any] | None
    ) -> None:
        known = self._known_nodes()
        now = _now()
        counted_before = dict(self._counted)
        seen: set[str] = set()
        for resource, obj, t in translated.values():
            if resource not in STATUS_RESOURCES:
                continue
            uid = str((obj.get("metadata") or {}).get("uid") or "")
            where = f"{resource}/{t.key}"
            seen.add(where)
            remembered = self._counted.get(where)
            desired, mine = desired_status(
                obj.get("status"),
                self.cfg.node,
                generation=t.generation,
                errors=t.errors,
                view=self.enforcement(t, agent),
                counted=remembered[1] if remembered and remembered[0] == uid else None,
                known_nodes=known,
                now=now,
            )
            patch = status_patch(obj, desired)
            if patch is None:
                self._remember(where, uid, mine)
                continue
            key = (resource, key_of(obj))
            if not self._may_patch(key):
                self._status_due = True
                continue
            try:
                self.api.patch_status(resource, t.namespace, t.name, patch)
                self.stats.patches += 1
                self._remember(where, uid, mine)
            except Conflict:
                self.stats.conflicts += 1  # the watch brings the newer object; then we look again
                self._status_due = True
            except KubeError as exc:
                self.stats.patch_errors += 1
                self._status_due = True
                self._next_patch[key] = self.clock() + 10 * self.cfg.status_interval  # back off
                log.warning("status of %s: %s", t.key, exc)
        self._counted = {k: v for k, v in self._counted.items() if k in seen}
        if self._counted != counted_before:
            output.write_json(
                self.cfg.counted_file,
                {
                    k: {"uid": u, "generation": c.generation, "state": c.state}
                    for k, (u, c) in self._counted.items()
                },
            )

    def _remember(self, where: str, uid: str, counted: Counted | None) -> None:
        if counted is None:
            self._counted.pop(where, None)
        else:
            self._counted[where] = (uid, counted)

    def _may_patch(self, key: tuple[Resource, tuple[str, str]]) -> bool:
        """Per object at most one patch per ``status_interval``; overall a token bucket."""
        now = self.clock()
        if now < self._next_patch.get(key, 0.0):
            self._wake_later(self._next_patch[key] - now)
            return False
        self._tokens = min(
            self.cfg.status_rate, self._tokens + (now - self._tokens_at) * self.cfg.status_rate
        )
        self._tokens_at = now
        if self._tokens < 1:
            self._wake_later(1 / self.cfg.status_rate)
            return False
        self._tokens -= 1
        self._next_patch[key] = now + self.cfg.status_interval
        return True

    def _wake_later(self, seconds: float) -> None:
        at = self.clock() + seconds
        self._wake_at = at if self._wake_at is None else min(self._wake_at, at)

    # --------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        return {
            "node": self.cfg.node,
            "synced": self.synced(),
            "policies": len(self.current),
            "invalid": self.stats.invalid,
            "policy_set": self.policy_set.digest,
            "stats": {k: v for k, v in vars(self.stats).items() if k != "passes"},
            "informers": {
                str(r): {**vars(i.stats), "resourceVersion": i.resource_version, "error": i.last_error}
                for r, i in self.informers.items()
            },
        }


def _load_counted(path: Path) -> dict[str, tuple[str, Counted]]:
    """The counts this node contributed before a restart (unreadable: none; the statuses self-correct at
    the next generation)."""
    data = watch.read_status(path) or {}
    out: dict[str, tuple[str, Counted]] = {}
    for where, entry in data.items():
        if isinstance(entry, Mapping) and entry.get("state") in ("enforcing", "failing"):
            out[where] = (str(entry.get("uid")), Counted(int(entry.get("generation") or 0), entry["state"]))
    return out


def proxy_rejection(agent: Mapping[str, Any]) -> str | None:
    """The node's Envoy rejected the latest HTTP configuration (it keeps enforcing the previous one)."""
    for name in ("envoy", "xds"):
        service = (agent.get("services") or {}).get(name) or {}
        rejected = service.get("rejected")
        if isinstance(rejected, Mapping):
            where = ", ".join(str(r) for r in rejected.get("resources") or [])
            return (
                f"Envoy rejected the HTTP configuration ({rejected.get('type')} {where}): "
                f"{rejected.get('error')}; it keeps enforcing the previous one"
            )
    return None


def policy_problems(agent: Mapping[str, Any], key: str) -> list[str]:
    """``path: message`` of each rule of the policy ``key`` the node's agent refuses although it applied
    the policy (``policy_errors`` in its status: e.g. a TLS secret missing or malformed)."""
    return [
        f"{p.get('path')}: {p.get('message')}"
        for p in agent.get("policy_errors") or []
        if isinstance(p, Mapping) and p.get("policy") == key
    ]


@functools.lru_cache(maxsize=4096)
def has_http_rules(text: str) -> bool:
    """Whether a policy document (YAML) has ``toPorts[].rules.http``."""
    doc = yaml.safe_load(text) or {}
    rules = [r for r in (doc.get("spec"), *(doc.get("specs") or [])) if isinstance(r, dict)]
    return any(
        isinstance(port, dict)
        and isinstance(port.get("rules"), dict)
        and port["rules"].get("http") is not None
        for rule in rules
        for direction in ("ingress", "egress")
        for entry in rule.get(direction) or []
        for port in (entry.get("toPorts") or [])
    )
