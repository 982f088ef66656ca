"""The IPv6 extension-header walk takes exactly L7G_MAX_EXT headers (an off-by-one dropped the sixth)."""

from __future__ import annotations

import socket

import pytest

from bpf.reasons import Verdict
from tests.datapath.conftest import Lab
from tests.datapath.test_parsing import (
    DSTOPTS,
    HOPOPTS,
    MAX_EXT,
    UDP,
    chain,
    echoed,
    ipv6,
    plab,  # noqa: F401  (fixture)
    send6,
    udp,
    udp_socket,
    verdict_of,
)

pytestmark = pytest.mark.root


def test_exactly_max_ext_extension_headers_are_walked(plab: Lab) -> None:  # noqa: F811
    """parse.h walks at most L7G_MAX_EXT extension headers: six (= L7G_MAX_EXT) before UDP pass."""
    a, b = plab.pod("a"), plab.pod("b")
    with udp_socket(plab, socket.AF_INET6) as (s, port):
        nh, payload = chain([HOPOPTS] + [DSTOPTS] * (MAX_EXT - 1), UDP, udp(a.ip6, b.ip6, port, 53, b"6"))
        send6(plab, ipv6(a.ip6, b.ip6, nh, payload))
        assert echoed(s, b"6")
    assert verdict_of(plab, UDP, 53).verdict == Verdict.ALLOW
