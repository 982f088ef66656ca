"""l7gate core: policy model, identities, resolution, sources, agent, lab and CLI.

Data flow (see DESIGN.md)::

    files / Kubernetes / lab ──► policy (model + validation) ──► identity ──► resolve ──► sinks
                                                                                        (bpf, xds, dnsproxy)
"""
