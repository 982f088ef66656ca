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


def _ec_key(path: Path) -> None:
    run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            str(path),
        ]
    )
    path.chmod(0o600)


def authority(directory: Path, name: str) -> tuple[Path, Path]:
    """A test certificate authority: ``NAME.crt`` (CA:TRUE, valid 7 days) and ``NAME.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _ec_key(key)
    run([
        "openssl", "req", "-x509", "-new", "-key", str(key), "-days", "7", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", str(cert),
    ])  # fmt: skip
    return cert, key


def issue(
    directory: Path,
    name: str,
    ca: tuple[Path, Path],
    dns_names: list[str],
    ips: tuple[str, ...] = (),
    *,
    usage: str = "serverAuth",
) -> tuple[Path, Path]:
    """A certificate for the names and addresses, signed by ``ca`` (see :func:`authority`); ``usage``:
    its extended key usage (``clientAuth`` for a client certificate: mutual TLS)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    _ec_key(key)
    run(
        [
            "openssl",
            "req",
            "-new",
            "-key",
            str(key),
            "-subj",
            f"/CN={(dns_names or [name])[0]}",
            "-out",
            str(csr),
        ]
    )
    sans = [f"DNS:{n}" for n in dns_names] + [f"IP:{ipaddress.ip_address(ip)}" for ip in ips]
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={','.join(sans)}\nextendedKeyUsage={usage}\n")
    run([
        "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "7", "-extfile", str(extensions), "-out", str(cert),
    ])  # fmt: skip
    csr.unlink()
    extensions.unlink()
    return cert, key
