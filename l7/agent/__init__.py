"""The node agent: wires policy sources (files, the lab, Kubernetes) through resolution to the node's
datapath and proxies. Resolution is :mod:`l7.resolve.engine` (incremental), planning :mod:`l7.plan`
(pure); the agent applies their differences.

* :mod:`l7.agent.node` — the agent loop (inputs, keep the last good set, status file, services);
* :mod:`l7.agent.inputs`, :mod:`l7.agent.inotify` — the files-mode inputs, read incrementally on events;
* :mod:`l7.agent.applier` — the engine's changes → a delta of datapath entries (per changed endpoint);
* :mod:`l7.agent.sync` — writes a delta (or, at start, the difference with what the pinned maps hold);
* :mod:`l7.agent.services` — the node-service interface (prepare before the sync, commit after);
* services: :mod:`l7.agent.envoy` (Envoy + xDS, or xDS only: :mod:`l7.agent.envoy_supervisor` runs or
  adopts Envoy, :mod:`l7.agent.envoy_publisher` serves and confirms xDS snapshots,
  :mod:`l7.agent.http_redirects` retires proxy ports), :mod:`l7.agent.dns` (DNS proxy and
  toFQDNs, with :mod:`l7.agent.fqdn` the FQDN cache), :mod:`l7.agent.flows` (flow log),
  :mod:`l7.agent.metrics` (Prometheus);
* :mod:`l7.agent.socket_keeper` — holds the DNS listening sockets across agent restarts;
* :mod:`l7.agent.secrets` — headerMatches secrets from files.
"""
