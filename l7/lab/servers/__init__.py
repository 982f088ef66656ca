"""Small servers the lab runs inside pod and world namespaces: :mod:`serve` (run by path, stdlib only, one
process per namespace serving all of its ports). See ``serve.py`` for the kinds and the command line."""

from pathlib import Path

SERVE = Path(__file__).resolve().parent / "serve.py"
