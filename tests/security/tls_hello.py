"""ClientHello bytes for the adversarial TLS suite: a real one (Python's ssl over memory BIOs, never sent
anywhere by this module), taken apart into extensions and put back together with changes, so a test can
send SNI values and shapes that no TLS library would produce (non-ASCII, two names, two extensions, NUL,
other name types, a hello split over many records)."""

from __future__ import annotations

import contextlib
import ssl
import struct
from dataclasses import dataclass, replace

SERVER_NAME = 0
PADDING = 21
ECH = 0xFE0D  # encrypted_client_hello (draft-ietf-tls-esni)


def real_hello(sni: str | None, version: str = "1.3", alpn: tuple[str, ...] = ()) -> bytes:
    """The first flight of a real client (one TLS record holding the ClientHello)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


@dataclass(frozen=True)
class Hello:
    """A ClientHello: the body before the extensions, and the extensions as (type, data), in order."""

    head: bytes
    extensions: tuple[tuple[int, bytes], ...]

    @classmethod
    def parse(cls, record: bytes) -> Hello:
        assert record[0] == 22, "not a handshake record"
        body = record[5 : 5 + struct.unpack("!H", record[3:5])[0]]
        assert body[0] == 1, "not a ClientHello"
        msg = body[4 : 4 + int.from_bytes(body[1:4], "big")]
        at = 2 + 32
        at += 1 + msg[at]  # session id
        at += 2 + struct.unpack("!H", msg[at : at + 2])[0]  # cipher suites
        at += 1 + msg[at]  # compression methods
        head, rest = msg[:at], msg[at + 2 :]
        extensions = []
        while rest:
            kind, size = struct.unpack("!HH", rest[:4])
            extensions.append((kind, rest[4 : 4 + size]))
            rest = rest[4 + size :]
        return cls(head, tuple(extensions))

    def handshake(self) -> bytes:
        """The handshake message (type 1, 24-bit length)."""
        ext = b"".join(struct.pack("!HH", k, len(d)) + d for k, d in self.extensions)
        msg = self.head + struct.pack("!H", len(ext)) + ext
        return b"\x01" + len(msg).to_bytes(3, "big") + msg

    def records(self, size: int = 1 << 14) -> bytes:
        """The handshake message in TLS records of at most ``size`` bytes each."""
        data, out = self.handshake(), b""
        for at in range(0, len(data), size):
            part = data[at : at + size]
            out += b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
        return out

    def without(self, kind: int) -> Hello:
        return replace(self, extensions=tuple(e for e in self.extensions if e[0] != kind))

    def with_extension(self, kind: int, data: bytes, *, first: bool = True) -> Hello:
        """``kind`` added (another one of the same type stays): first in the list, or last."""
        ext = ((kind, data),)
        return replace(self, extensions=ext + self.extensions if first else self.extensions + ext)

    def with_names(self, *names: bytes, name_type: int = 0) -> Hello:
        """The server_name extension replaced by one listing ``names`` (none: the extension removed)."""
        hello = self.without(SERVER_NAME)
        if not names:
            return hello
        return hello.with_extension(SERVER_NAME, server_name(*names, name_type=name_type))


def server_name(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + struct.pack("!H", len(n)) + n for n in names)
    return struct.pack("!H", len(entries)) + entries
