"""The topology's ``secrets``: TLS Secrets written at ``lab up`` where the node agents read them
(``agent/secrets/<namespace>/<name>/`` with the Kubernetes Secret's keys as files, see
:mod:`l7.agent.secrets`). ``issue`` secrets are signed by the lab's test CA (``certs/lab-ca.crt``),
``trust`` secrets carry the self-signed certificate of a lab TLS server as ``ca.crt``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from l7.lab import certs
from l7.lab.topology import LabSecret

LAB_CA = "lab-ca"


def write_secrets(secrets: list[LabSecret], certs_dir: Path, secrets_dir: Path) -> list[Path]:
    """Write every secret (after the TLS servers' certificates exist in ``certs_dir``); the files written."""
    written: list[Path] = []
    ca: tuple[Path, Path] | None = None
    for secret in secrets:
        target = secrets_dir / secret.namespace / secret.name
        target.mkdir(parents=True, exist_ok=True)
        if secret.issue is not None:
            if ca is None:
                ca = certs.authority(certs_dir, LAB_CA)
                written += list(ca)
            issued = certs_dir / "issued" / secret.namespace
            cert, key = certs.issue(issued, secret.name, ca, secret.issue)
            items = {"tls.crt": cert, "tls.key": key}
        else:
            items = {"ca.crt": certs_dir / f"{secret.trust}.crt"}
        for item, source in items.items():
            shutil.copyfile(source, target / item)
            if item == "tls.key":
                (target / item).chmod(0o600)
            written.append(target / item)
    return written
