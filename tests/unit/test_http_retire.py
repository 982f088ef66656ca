"""The pure bookkeeping of retired HTTP proxy ports (l7.agent.http_redirects.retire): which listeners of
ports that went out of use are kept, with whose routes, and which deny everything."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from l7.agent.http_redirects import RETIRE_AFTER, Redirects, Retired, retire

FLOW_A: tuple[str, int, int, int | None] = ("ns/a", 0, 0, 6)
FLOW_B: tuple[str, int, int, int | None] = ("ns/b", 0, 7, 6)


def given(redirects: Redirects) -> Callable[[], Redirects]:
    return lambda: redirects


def never() -> Redirects:
    raise AssertionError("redirects computed although no port went out of use")


def test_nothing_gone_nothing_retired_and_no_redirects_computed() -> None:
    assert retire({}, set(), {10001}, old_redirects=never, new_redirects=never, now=1.0) == ({}, set())
    assert retire({}, {10001}, {10001, 10002}, old_redirects=never, new_redirects=never, now=1.0) == (
        {},
        set(),
    )


def test_a_port_with_one_successor_keeps_its_listener_with_the_successors_routes() -> None:
    before: Redirects = {FLOW_A: [(80, 80, 10001)]}
    after: Redirects = {FLOW_A: [(80, 80, 10002)]}
    retired, deny = retire(
        {}, {10001}, {10002}, old_redirects=given(before), new_redirects=given(after), now=5.0
    )
    assert retired == {10001: (10002, 5.0)}
    assert deny == set()


def test_a_port_whose_traffic_is_split_or_no_longer_redirected_denies_everything() -> None:
    before: Redirects = {FLOW_A: [(80, 80, 10001)], FLOW_B: [(80, 80, 10001), (443, 443, 10003)]}
    after: Redirects = {FLOW_A: [(80, 80, 10004)], FLOW_B: [(80, 80, 10005)]}
    retired, deny = retire(
        {},
        {10001, 10003},
        {10004, 10005},
        old_redirects=given(before),
        new_redirects=given(after),
        now=5.0,
    )
    assert retired == {10001: (None, 5.0), 10003: (None, 5.0)}
    assert deny == {10001, 10003}


def test_retired_ports_expire_after_keep() -> None:
    previous: Retired = {10001: (10002, 0.0)}
    kept, _ = retire(previous, {10002}, {10002}, old_redirects=never, new_redirects=never, now=RETIRE_AFTER)
    assert kept == previous
    gone, deny = retire(
        previous, {10002}, {10002}, old_redirects=never, new_redirects=never, now=RETIRE_AFTER + 0.1
    )
    assert gone == {} and deny == set()
    short, _ = retire(previous, {10002}, {10002}, old_redirects=never, new_redirects=never, now=2.0, keep=1.0)
    assert short == {}


def test_a_port_back_in_use_is_no_longer_retired() -> None:
    previous: Retired = {10001: (10002, 0.0)}
    retired, deny = retire(
        previous, {10002}, {10001, 10002}, old_redirects=never, new_redirects=never, now=1.0
    )
    assert retired == {} and deny == set()


def test_a_successor_that_goes_out_of_use_too_is_followed() -> None:
    """10001 → 10002 earlier; now 10002 → 10003: 10001's traffic is judged by 10003."""
    previous: Retired = {10001: (10002, 1.0)}
    before: Redirects = {FLOW_A: [(80, 80, 10002)]}
    after: Redirects = {FLOW_A: [(80, 80, 10003)]}
    retired, deny = retire(
        previous, {10002}, {10003}, old_redirects=given(before), new_redirects=given(after), now=2.0
    )
    assert retired == {10001: (10003, 1.0), 10002: (10003, 2.0)}  # 10001 keeps its retirement time
    assert deny == set()


def test_a_successor_that_ends_nowhere_denies() -> None:
    """10001 → 10002 earlier; now 10002 goes out of use and its traffic no longer goes through Envoy."""
    previous: Retired = {10001: (10002, 1.0)}
    before: Redirects = {FLOW_A: [(80, 80, 10002)]}
    retired, deny = retire(
        previous, {10002}, {10004}, old_redirects=given(before), new_redirects=given({}), now=2.0
    )
    assert retired == {10001: (None, 1.0), 10002: (None, 2.0)}
    assert deny == {10001, 10002}


@pytest.mark.parametrize("now", [0.0, 100.0])
def test_the_input_map_is_not_changed(now: float) -> None:
    previous: Retired = {10001: (10002, 0.0)}
    before: Redirects = {FLOW_A: [(80, 80, 10002)]}
    after: Redirects = {FLOW_A: [(80, 80, 10003)]}
    retire(previous, {10002}, {10003}, old_redirects=given(before), new_redirects=given(after), now=now)
    assert previous == {10001: (10002, 0.0)}
