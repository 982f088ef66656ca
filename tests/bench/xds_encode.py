"""xDS encode: build + encode snapshots with ``l7xds.translate.Translator``.

Rules are HTTP rules with method + path + host + one header (4 matchers each, as in docs/xds.md),
grouped into policies of 10 rules, one proxy port (listener + route configuration) per policy.

- full N (100, 1,000, 5,000 rules): a fresh Translator builds and encodes the whole snapshot.
  Baseline: the same number of routes built in place with the bare protobuf API (no translator, no
  snapshot) and serialised once: the floor any translation has to pay, measured in the same run.
- one changed policy among 5,000 rules: a warm Translator, one policy's rules change (new content
  every time), the next snapshot is built. Baseline: the full 5,000-rule build of the same run.

Best and median of N; the figure is the median.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from tests.bench.common import Figure, Options, best_median_ms, timed

NAME = "xds_encode"
RULES_PER_POLICY = 10
SIZES = (100, 1000, 5000)
FULL_TARGET_MS = 200.0
CHANGE_TARGET_MS = 20.0
TARGET_SIZE = 5000


def _repo_first() -> None:
    # The xds-protos wheel also installs a top-level ``xds`` package; ours must win (docs/xds.md).
    repo = str(Path(__file__).resolve().parents[2])
    if sys.path[:1] != [repo]:
        sys.path.insert(0, repo)
    found = sys.modules.get("xds")
    if found is not None and not str(getattr(found, "__file__", "")).startswith(repo):
        del sys.modules["xds"]


def _rule(i: int, variant: str = "") -> object:
    from l7.policy.model import HTTPRule

    return HTTPRule(
        method="GET|HEAD",
        path=f"/api/v1/items{variant}/{i}(/.*)?",
        host=f"svc{i % 50}.example.com",
        headers=(f"X-Tenant: t{i}",),
    )


def _ports(total: int) -> dict[int, tuple[object, ...]]:
    rules = [_rule(i) for i in range(total)]
    return {
        20000 + p: tuple(rules[p * RULES_PER_POLICY : (p + 1) * RULES_PER_POLICY])
        for p in range((total + RULES_PER_POLICY - 1) // RULES_PER_POLICY)
    }


def _bare(total: int) -> None:
    """The same routes with the bare protobuf API, mutated in place, serialised once."""
    from envoy.config.route.v3 import route_pb2

    cfg = route_pb2.RouteConfiguration(name="bare")
    vh = cfg.virtual_hosts.add(name="any", domains=["*"])
    for i in range(total):
        route = vh.routes.add(name=f"allow-{i}")
        match = route.match
        match.prefix = ""
        for name, pattern in (
            (":method", "GET|HEAD"),
            (":path", f"/api/v1/items/{i}(/.*)?"),
            (":authority", rf"(?i:svc{i % 50}\.example\.com)\.?(?::[0-9]+)?"),
        ):
            header = match.headers.add(name=name)
            header.string_match.safe_regex.regex = pattern
        match.headers.add(name="x-tenant").string_match.exact = f"t{i}"
        route.route.cluster = "l7gate-original-dst"
        route.route.timeout.seconds = 0
    cfg.SerializeToString()


def run(opts: Options) -> list[Figure]:
    _repo_first()
    from l7xds.translate import ProxySettings, Translator

    settings = ProxySettings()
    repeat = {100: 15, 1000: 9, 5000: 7}
    if opts.quick:
        repeat = {100: 3, 1000: 3, 5000: 2}
    figures: list[Figure] = []
    full_median: dict[int, float] = {}
    for total in SIZES:
        ports = _ports(total)
        samples = timed(lambda p=ports: Translator().snapshot(p, settings), repeat[total])  # type: ignore[misc]
        bare = timed(lambda t=total: _bare(t), repeat[total])  # type: ignore[misc]
        stats, bare_stats = best_median_ms(samples), best_median_ms(bare)
        full_median[total] = stats["median_ms"]
        target = f"<= {FULL_TARGET_MS:g} ms" if total == TARGET_SIZE else ""
        figures.append(
            Figure(
                name=f"full build + encode, {total:,} rules ({len(ports)} policies)",
                value=stats["median_ms"],
                best=stats["best_ms"],
                unit="ms",
                baseline=bare_stats["median_ms"],
                baseline_name=f"bare protobuf, {total:,} routes",
                target=target,
                met=(stats["median_ms"] <= FULL_TARGET_MS) if target else None,
                details={"translator": stats, "bare_protobuf": bare_stats, "resources": 1 + 2 * len(ports)},
            )
        )

    ports = _ports(TARGET_SIZE)
    translator = Translator()
    translator.snapshot(ports, settings)
    changed_port = 20000 + len(ports) // 2
    samples = []
    encoded = []
    for k in range(30 if not opts.quick else 5):
        ports = dict(ports)
        ports[changed_port] = tuple(_rule(i, f"-v{k}") for i in range(RULES_PER_POLICY))
        before = translator.encoded
        samples.extend(timed(lambda p=ports: translator.snapshot(p, settings), 1))  # type: ignore[misc]
        encoded.append(translator.encoded - before)
    stats = best_median_ms(samples)
    figures.append(
        Figure(
            name=f"one changed policy ({RULES_PER_POLICY} rules) among {TARGET_SIZE:,} rules",
            value=stats["median_ms"],
            best=stats["best_ms"],
            unit="ms",
            baseline=full_median[TARGET_SIZE],
            baseline_name=f"full build, {TARGET_SIZE:,} rules",
            target=f"<= {CHANGE_TARGET_MS:g} ms",
            met=stats["median_ms"] <= CHANGE_TARGET_MS,
            details={**stats, "resources_encoded_per_change": statistics.median(encoded)},
        )
    )
    return figures
