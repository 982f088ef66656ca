"""``python -m l7.cli ARGS`` = ``l7gate ARGS`` (what the lab starts in each node namespace: ``agent ...``)."""

from __future__ import annotations

from l7.cli import main

if __name__ == "__main__":
    main()
