"""The node agent: wires policy sources (files, the lab, Kubernetes) through resolution to the node's
datapath and proxies. Resolution is :mod:`l7.resolve.engine` (incremental), planning :mod:`l7.plan`
(pure); the agent applies their differences.

* :mod:`l7.agent.sync` — writes the difference between the desired state and the datapath's maps;
* :mod:`l7.agent.node` — the agent loop (watch inputs, keep the last good set, status file, services);
* :mod:`l7.agent.services` — the node-service interface (prepare before the sync, commit after);
* services: :mod:`l7.agent.envoy` (Envoy + xDS, or xDS only), :mod:`l7.agent.dns` (DNS proxy and
  toFQDNs, with :mod:`l7.agent.fqdn` the FQDN cache), :mod:`l7.agent.flows` (flow log),
  :mod:`l7.agent.metrics` (Prometheus);
* :mod:`l7.agent.socket_keeper` — holds the DNS listening sockets across agent restarts;
* :mod:`l7.agent.secrets` — headerMatches secrets from files;

"""
