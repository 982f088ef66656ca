"""The answer chain: which A/AAAA records of an upstream answer belong to the query name.

Only the answer section is read. The chain starts at the query name and follows CNAMEs found in the
answer section (case-insensitively, at most :data:`MAX_CHAIN` links); every A/AAAA record whose owner is
on the chain is credited to the query name. Records for other names, and anything in the authority and
additional sections, are ignored. Each IP's TTL is the lowest TTL on its path: its own record's and
those of the CNAMEs that led to it.
"""

from __future__ import annotations

import socket
import struct

from .errors import MalformedMessage
from .wire import CLASS_IN, HEADER_LENGTH, TYPE_A, TYPE_AAAA, TYPE_CNAME, read_name

MAX_CHAIN = 16

_RR = struct.Struct("!HHIH")
_QUESTION_POINTER = b"\xc0\x0c"

IPWithTTL = tuple[str, int]


def answer_ips(reply: bytes, qname: str, question_length: int) -> tuple[IPWithTTL, ...]:
    """The A/AAAA records (IP text, TTL) on the chain of ``qname`` in the answer section of ``reply``.

    ``reply`` must already be known to carry the query's question (``question_length`` bytes after the
    header). Raises :class:`MalformedMessage` when the answer section cannot be parsed.
    """
    ancount = (reply[6] << 8) | reply[7]
    if not ancount:
        return ()
    pos = HEADER_LENGTH + question_length
    size = len(reply)
    addresses: list[tuple[str, int, str]] = []
    cnames: dict[str, tuple[str, int]] = {}
    for _ in range(ancount):
        if reply[pos : pos + 2] == _QUESTION_POINTER:  # the common case: the owner is the query name
            owner, pos = qname, pos + 2
        else:
            owner, pos = read_name(reply, pos)
        if pos + 10 > size:
            raise MalformedMessage("resource record header runs past the end of the message", pos)
        rtype, rclass, ttl, rdlength = _RR.unpack_from(reply, pos)
        pos += 10
        end = pos + rdlength
        if end > size:
            raise MalformedMessage("record data runs past the end of the message", pos)
        if rclass == CLASS_IN:
            if ttl > 0x7FFFFFFF:  # RFC 2181 §8: treat as zero
                ttl = 0
            if rtype == TYPE_A and rdlength == 4:
                addresses.append((owner, ttl, socket.inet_ntoa(reply[pos:end])))
            elif rtype == TYPE_AAAA and rdlength == 16:
                addresses.append((owner, ttl, socket.inet_ntop(socket.AF_INET6, reply[pos:end])))
            elif rtype == TYPE_CNAME:
                target, after = read_name(reply, pos)
                if after != end:
                    raise MalformedMessage("CNAME data length does not match its name", pos)
                cnames.setdefault(owner, (target, ttl))
        pos = end
    # The names on the chain and the lowest CNAME TTL on the way to each of them.
    reach = {qname: 0x7FFFFFFF}
    name = qname
    for _ in range(MAX_CHAIN):
        link = cnames.get(name)
        if link is None or link[0] in reach:
            break
        reach[link[0]] = min(reach[name], link[1])
        name = link[0]
    found: list[IPWithTTL] = []
    for owner, ttl, ip in addresses:
        limit = reach.get(owner)
        if limit is not None:
            found.append((ip, min(ttl, limit)))
    return tuple(found)
