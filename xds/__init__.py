"""xDS management server (ADS over gRPC, SotW and Delta) and translation of resolved HTTP policy.

Data flow::

    {proxy port: HTTP rule set} ─► translate.Translator ─► snapshot.Snapshot ─► cache.SnapshotCache
                                   (pure, memoised encode)   (immutable, checked)   (per node, watchers)
                                                                                          │
                     Envoy ◄── ADS stream (sotw.SotwStream / delta.DeltaStream) ◄── server.XdsServer

The import name ``xds`` is shared with the ``xds-protos`` wheel, whose generated ``xds.core``,
``xds.type`` ... modules the Envoy protos import. This package therefore extends its ``__path__`` with the
wheel's ``xds`` folder so both resolve. It only works when this package is the one imported as ``xds``
(the repository root first on ``sys.path``); see docs/xds.md.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
