"""The node agent: wires policy sources (files, the lab) through resolution to the node datapath.

* :mod:`l7.agent.plan` — pure: resolved policy → desired datapath state (endpoints, ipcache, decisions);
* :mod:`l7.agent.sync` — writes the difference between the desired state and the datapath's maps;
* :mod:`l7.agent.node` — the agent loop (watch inputs, keep the last good set, status file);
* :mod:`l7.agent.lab` — the lab's agents: start, wait, ``lab apply``, datapath removal on ``down``.
"""
