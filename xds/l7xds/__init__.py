"""xDS management server (ADS over gRPC, SotW and Delta) and translation of resolved HTTP policy.

Data flow::

    {proxy port: HTTP rule set} ─► translate.Translator ─► snapshot.Snapshot ─► cache.SnapshotCache
                                   (pure, memoised encode)   (immutable, checked)   (per node, watchers)
                                                                                          │
                     Envoy ◄── ADS stream (sotw.SotwStream / delta.DeltaStream) ◄── server.XdsServer

The package lives in the repository's ``xds/`` folder under its own import name, ``l7xds``: the
``xds-protos`` wheel owns the top-level name ``xds`` (its generated ``xds.core``, ``xds.type`` ...
modules, which the Envoy protos import). setuptools finds it through ``where = [".", "xds"]``; no path
hack is needed (docs/xds.md).
"""
