"""Kubernetes support without the Kubernetes client: CRDs, translation, status (pure parts).

The agent's Kubernetes mode feeds the *unchanged* files-mode agent loop::

    API server ──list+watch──► l7.kube (the only module importing ``kubernetes``)
                                   │ objects (dicts), per resource, via informer.Informer
                                   ▼
    informer.Store ──► controller.Controller ──► policies.translate(obj) ─► valid?  ──► output.PolicySet
                          │                                                   │ no      (policies/ symlink
                          │                                                   ▼          swapped atomically)
                          │                                           status: Valid=False + field paths
                          ├──► endpoints.endpoints_document(pods, namespaces, nodes, services)
                          │                                   ──► endpoints.json (atomic replace)
                          ├──► secrets referenced by headerMatches (get, one by one) ──► secrets/<ns>/<name>
                          │                  agent loop (l7.agent.node) polls both, enforces, reports
                          │                  <state_dir>/agent-<node>.json (applied policies hash, errors)
                          └──◄── status.desired_status(...) per policy ──► PATCH …/status (merge patch,
                                 only on change, rate limited, with a resourceVersion precondition)

Modules: :mod:`crd` (CustomResourceDefinitions from the pydantic model), :mod:`policies` (object →
policy document, validation), :mod:`endpoints` (pods, namespaces, nodes, services → endpoints file),
:mod:`secrets` (referenced secret values), :mod:`status` (conditions), :mod:`informer` (list+watch state
machine over a small client protocol), :mod:`output` (atomic files), :mod:`errors` (what
:mod:`l7.kube` maps the client's exceptions to), :mod:`controller` (ties them together, threads only).
"""
