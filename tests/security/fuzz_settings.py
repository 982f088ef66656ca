"""Hypothesis settings shared by the fuzz tests of tests/security/ (issue 11, "Fuzzing").

CI runs a bounded number of examples per test (:data:`CI_EXAMPLES`, scaled per test). A long run sets
``L7GATE_FUZZ_EXAMPLES`` (e.g. ``1000000``) and every fuzz test then draws that many examples::

    L7GATE_FUZZ_EXAMPLES=1000000 .venv/bin/pytest tests/security/test_fuzz_dns.py -k pure -x

CI runs are derandomized (the same examples every time); a long run draws random ones, and hypothesis
prints the reproducing blob of a failure and keeps it in ``.hypothesis/``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG_RUN = int(os.environ.get("L7GATE_FUZZ_EXAMPLES", "0"))


def fuzz_settings(ci_examples: int) -> settings:
    """``ci_examples`` examples in CI (no deadline per example: the tests bound time themselves), or the
    long-run count when ``L7GATE_FUZZ_EXAMPLES`` is set."""
    return settings(
        max_examples=LONG_RUN or ci_examples,
        deadline=None,
        derandomize=not LONG_RUN,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )
