"""A minimal HTTP/2 prior-knowledge (h2c) client that sends header lists exactly as given.

``python adv_h2client.py HOST PORT`` reads a JSON list of ``[name, value]`` pairs from stdin (pseudo-headers
included, in the order given, duplicates kept: curl cannot send ``:authority`` and a different ``host``),
sends them as one HEADERS frame (HPACK literals without indexing, no Huffman) with END_STREAM on stream 1,
and prints ``{"status", "body", "rst", "goaway", "closed"}``: the response
status (decoded for the forms Envoy uses), the DATA of stream 1, a RST_STREAM error code, a GOAWAY code,
and ``closed`` (the server closed the connection before the stream ended).
"""

from __future__ import annotations

import json
import socket
import struct
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}


def integer(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + integer(len(name), 7) + name + integer(len(value), 7) + value


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def huffman_digits(data: bytes) -> int | None:
    """Decode a Huffman-coded string of digits (RFC 7541 Appendix B: 0-2 are 5 bits, 3-9 are 6 bits)."""
    bits = "".join(f"{b:08b}" for b in data)
    out, i = "", 0
    while len(bits) - i >= 5:
        five = int(bits[i : i + 5], 2)
        if five <= 2:
            out += str(five)
            i += 5
            continue
        if len(bits) - i < 6:
            break
        six = int(bits[i : i + 6], 2)
        if 0b011001 <= six <= 0b011111:
            out += str(six - 0b011001 + 3)
            i += 6
            continue
        break
    return int(out) if out else None


def status_of(block: bytes) -> int | None:
    if not block:
        return None
    first = block[0]
    if first & 0x80:
        return STATIC_STATUS.get(first & 0x7F)
    if first in (0x48, 0x08, 0x18):  # literal with the indexed name :status
        length, huffman = block[1] & 0x7F, block[1] & 0x80
        value = block[2 : 2 + length]
        return huffman_digits(value) if huffman else int(value)
    return None


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    headers = json.load(sys.stdin)
    block = b"".join(literal(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers)
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(PREFACE + frame(4, 0, 0, b"") + frame(1, 0x5, 1, block))
    result: dict[str, object] = {"status": None, "body": "", "rst": None, "goaway": None, "closed": False}
    buf = b""
    body = b""
    done = False
    try:
        while not done:
            chunk = sock.recv(65536)
            if not chunk:
                result["closed"] = True
                break
            buf += chunk
            while len(buf) >= 9 and not done:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                kind, flags = buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9 : 9 + length], buf[9 + length :]
                if kind == 4 and not flags & 1:
                    sock.sendall(frame(4, 1, 0, b""))
                elif kind == 1 and stream == 1:
                    result["status"] = status_of(payload)
                    done = bool(flags & 1)
                elif kind == 0 and stream == 1:
                    body += payload
                    done = bool(flags & 1)
                elif kind == 3 and stream == 1:
                    result["rst"] = int.from_bytes(payload[:4], "big")
                    done = True
                elif kind == 7:
                    result["goaway"] = int.from_bytes(payload[4:8], "big")
                    done = True
    except (TimeoutError, ConnectionResetError):
        pass
    sock.close()
    result["body"] = body.decode("latin-1")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
