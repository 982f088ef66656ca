"""ICMP and ICMPv6 types by number or by Cilium's CamelCase name."""

from __future__ import annotations

FAMILIES = ("IPv4", "IPv6")

ICMP_TYPES: dict[str, dict[str, int]] = {
    "IPv4": {
        "EchoReply": 0,
        "DestinationUnreachable": 3,
        "Redirect": 5,
        "Echo": 8,
        "EchoRequest": 8,
        "RouterAdvertisement": 9,
        "RouterSelection": 10,
        "TimeExceeded": 11,
        "ParameterProblem": 12,
        "Timestamp": 13,
        "TimestampReply": 14,
        "Photuris": 40,
        "ExtendedEchoRequest": 42,
        "ExtendedEchoReply": 43,
    },
    "IPv6": {
        "DestinationUnreachable": 1,
        "PacketTooBig": 2,
        "TimeExceeded": 3,
        "ParameterProblem": 4,
        "EchoRequest": 128,
        "EchoReply": 129,
        "MulticastListenerQuery": 130,
        "MulticastListenerReport": 131,
        "MulticastListenerDone": 132,
        "RouterSolicitation": 133,
        "RouterAdvertisement": 134,
        "NeighborSolicitation": 135,
        "NeighborAdvertisement": 136,
        "RedirectMessage": 137,
        "RouterRenumbering": 138,
        "ICMPNodeInformationQuery": 139,
        "ICMPNodeInformationResponse": 140,
        "InverseNeighborDiscoverySolicitation": 141,
        "InverseNeighborDiscoveryAdvertisement": 142,
        "HomeAgentAddressDiscoveryRequest": 144,
        "HomeAgentAddressDiscoveryReply": 145,
        "MobilePrefixSolicitation": 146,
        "MobilePrefixAdvertisement": 147,
        "DuplicateAddressRequestCodeSuffix": 157,
        "DuplicateAddressConfirmationCodeSuffix": 158,
        "ExtendedEchoRequest": 160,
        "ExtendedEchoReply": 161,
    },
}


def icmp_type(family: str, value: int | str) -> int:
    """The numeric type of ``value`` (0–255, as int or decimal string, or a name) in ``family``.

    :class:`ValueError` says why it is not valid.
    """
    if family not in ICMP_TYPES:
        raise ValueError(f"unknown ICMP family {family!r} (IPv4 or IPv6)")
    if isinstance(value, str) and value.isdigit() and (value == "0" or not value.startswith("0")):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 255:
            return value
        raise ValueError(f"ICMP type {value} is out of range 0-255")
    names = ICMP_TYPES[family]
    if isinstance(value, str) and value in names:
        return names[value]
    raise ValueError(f"unknown {family} ICMP type {value!r} (a number 0-255 or one of {', '.join(names)})")
