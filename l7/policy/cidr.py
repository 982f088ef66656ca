"""CIDR prefixes of ``toCIDR`` / ``toCIDRSet`` (and their ``from`` twins)."""

from __future__ import annotations

import ipaddress
import re

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_BITS = re.compile(r"0|[1-9][0-9]{0,2}")


def parse_cidr(text: str, *, bare_ip: bool) -> Network:
    """``a.b.c.d/n`` or ``v6::/n`` (host bits may be set, as in Go's ``netip.ParsePrefix``).

    ``bare_ip`` also accepts an address alone as a /32 or /128, as Cilium does for ``toCIDR`` (but not
    for a ``toCIDRSet`` ``cidr``). :class:`ValueError` says why ``text`` is not acceptable.
    """
    if "%" in text:
        raise ValueError(f"{text!r}: zones are not allowed in a CIDR")
    address, slash, bits = text.partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid CIDR: {address!r} is not an IP address") from None
    if not slash:
        if not bare_ip:
            raise ValueError(f"{text!r} is not a CIDR: a prefix length (/n) is required")
        return ipaddress.ip_network(ip)
    if not _BITS.fullmatch(bits) or int(bits) > ip.max_prefixlen:
        raise ValueError(f"{text!r}: prefix length must be 0-{ip.max_prefixlen}")
    return ipaddress.ip_network(f"{ip}/{bits}", strict=False)
