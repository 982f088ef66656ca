"""What a command showed (pure): curl, dig, ping and ``openssl s_client`` results classified into one
:class:`Observation`, and the check of an observation against a step's :class:`~l7.demo.scenarios.Expect`.

curl exit statuses: 0 (a response; use ``-i``/``-I`` so the status line is in the output), 6 (could
not resolve the host: REFUSED/NXDOMAIN), 7 (connection refused), 28 (timed out), 35 (the TLS handshake
failed; 56 on an ``https://`` URL: the peer closed during it), 60 (the server's certificate is not
trusted). dig: 0 (a reply, ``status: RCODE`` in its header), 9 (no reply). ping: 0 (a reply), 1 (none).
``openssl s_client``: not 0 without a certificate in its output = the handshake failed; otherwise its
exit status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from l7.demo.scenarios import Expect

_STATUS_LINE = re.compile(r"^HTTP/[0-9.]+ (\d{3})", re.MULTILINE)
_DIG_STATUS = re.compile(r"status: ([A-Z]+)")
_ANSWER_RR = re.compile(r"^\S+\s+\d+\s+IN\s+(A|AAAA)\s+(\S+)\s*$", re.MULTILINE)
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Observation:
    outcome: str  # one of scenarios.OUTCOMES, or "error"
    exit: int
    status: int | None = None
    body: str = ""
    rcode: str | None = None
    ips: tuple[str, ...] = field(default_factory=tuple)
    detail: str = ""  # the error text, for anything unexpected

    def describe(self) -> str:
        if self.outcome == "http":
            lines = [" ".join(_TAGS.sub(" ", line).split()) for line in self.body.splitlines()]
            text = next((line for line in lines if line), "")
            return f"{self.status} {text[:40]!r}" if text else str(self.status)
        if self.outcome == "dns":
            return f"{self.rcode} {' '.join(self.ips)}".strip()
        return {
            "timeout": "timed out",
            "unresolved": "name not resolved",
            "refused": "connection refused",
            "handshake": "TLS handshake failed",
            "untrusted": "certificate not trusted",
            "reply": "ping reply",
        }.get(self.outcome, f"exit {self.exit} {self.detail}".strip())


def _split_http(out: str) -> tuple[int | None, str]:
    """The last response's status and body of ``curl -i`` output (headers, blank line, body)."""
    starts = list(_STATUS_LINE.finditer(out))
    if not starts:
        return None, out
    last = out[starts[-1].start() :]
    _, _, body = last.replace("\r\n", "\n").partition("\n\n")
    return int(starts[-1].group(1)), body


def classify(argv: list[str], exit: int, stdout: str, stderr: str) -> Observation:
    tool = argv[0].rsplit("/", 1)[-1] if argv else ""
    detail = (stderr.strip().splitlines() or [""])[-1][:120]
    if tool == "curl":
        if exit == 0:
            status, body = _split_http(stdout)
            if status is None:
                return Observation("error", exit, body=stdout, detail="no HTTP status line (use -i)")
            return Observation("http", exit, status=status, body=body)
        known = {6: "unresolved", 7: "refused", 28: "timeout", 35: "handshake", 60: "untrusted"}
        if exit == 56 and any(arg.startswith("https://") for arg in argv):
            return Observation("handshake", exit, detail=detail)
        return Observation(known.get(exit, "error"), exit, detail=detail)
    if tool == "openssl" and argv[1:2] == ["s_client"]:
        if exit != 0 and "BEGIN CERTIFICATE" not in stdout:
            return Observation("handshake", exit, detail=detail)
        return Observation("exit", exit, body=stdout, detail=detail)
    if tool == "dig":
        if exit == 9:
            return Observation("timeout", exit, detail=detail)
        m = _DIG_STATUS.search(stdout)
        if exit != 0 or m is None:
            return Observation("error", exit, detail=detail or stdout.strip()[:120])
        ips = tuple(ip for _kind, ip in _ANSWER_RR.findall(stdout))
        return Observation("dns", exit, rcode=m.group(1), ips=ips)
    if tool == "ping":
        if exit == 0:
            return Observation("reply", exit)
        if exit == 1:
            return Observation("timeout", exit)
        return Observation("error", exit, detail=detail)
    return Observation("exit", exit, body=stdout, detail=detail)


def check(expect: Expect, obs: Observation) -> tuple[bool, str]:
    """Whether ``obs`` shows what ``expect`` asks for; the reason when not."""
    if obs.outcome != expect.outcome:
        return False, f"expected {expect.describe()}, got {obs.describe()}"
    if expect.status is not None and obs.status != expect.status:
        return False, f"status {obs.status}, expected {expect.status}"
    if expect.body is not None and expect.body not in obs.body:
        return False, f"body does not contain {expect.body!r}"
    if expect.rcode is not None and obs.rcode != expect.rcode.upper():
        return False, f"rcode {obs.rcode}, expected {expect.rcode.upper()}"
    if expect.answer is not None and bool(obs.ips) != expect.answer:
        return False, "answer has IPs" if obs.ips else "answer has no IPs"
    if expect.exit is not None and obs.exit != expect.exit:
        return False, f"exit {obs.exit}, expected {expect.exit}"
    return True, ""
