"""Self-signed TLS certificates for the lab's servers, generated with openssl at ``lab up``."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from l7.lab.netns import run


def self_signed(directory: Path, name: str, dns_names: list[str], ips: list[str]) -> tuple[Path, Path]:
    """Write ``NAME.crt`` and ``NAME.key`` (EC P-256, valid 7 days) for the given names and addresses."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    sans = [f"DNS:{n}" for n in dns_names] + [f"IP:{ipaddress.ip_address(ip)}" for ip in ips]
    common = (dns_names or [name])[0]
    argv = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "7", "-subj", f"/CN={common}", "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    if sans:
        argv += ["-addext", "subjectAltName=" + ",".join(sans)]
    run(argv)
    key.chmod(0o600)
    return cert, key
