"""serverNames (SNI) and TLS interception end to end: a one-node lab with its agent, Envoy fed over
xDS/SDS, the datapath redirect, and real ``curl`` / ``openssl s_client`` inside the pods.

- world host ``cdn`` serves HTTPS for ``api.example.com`` *and* ``evil.example.net`` on one address
  (a CDN): ``toFQDNs`` + ``serverNames`` allow the first and refuse the second on the same IP, IPv4 and
  IPv6; a ClientHello without SNI is refused;
- pod to pod (ingress): ``web`` accepts TLS only for SNI ``web``;
- interception: ``inspector`` reaches ``https://api.example.com`` through Envoy, which terminates with the
  ``intercept`` secret (a test CA's certificate, checked by ``curl --cacert``), applies HTTP rules (403
  ``Access denied`` over TLS) and re-originates TLS verified against the ``upstream-ca`` secret's
  ``ca.crt`` (the server's certificate; another CA makes the upstream fail: 503);
- mutual TLS upstream: an ``originatingTLS`` secret with ``tls.crt``/``tls.key`` makes Envoy present that
  client certificate to a server that requires one (as Cilium does); without it the server refuses (503);
- rotation: new files → a new connection sees the new certificate, an open keep-alive connection
  goes on; a missing secret → connections refused and the error in the agent's status with the path.

One lab per module with a unique name, taken down in a finalizer.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from l7.lab import Lab, certs, down
from l7.lab import agents as agent_lab
from l7.lab.servers import SERVE
from l7.lab.topology import parse_topology
from tests.agent.agent_helpers import wait_for

pytestmark = pytest.mark.root

NAME = f"tls{os.getpid() % 100000}"
DENIED = "Access denied\r\n"
NODE = "node-1"

TOPOLOGY: dict[str, Any] = {
    "description": "TLS: SNI and interception",
    "nodes": [{"name": NODE}],
    "pods": [
        {"name": "client", "labels": {"app": "client"}},
        {"name": "inspector", "labels": {"app": "inspector"}},
        {"name": "web", "labels": {"app": "web"}, "server": {"kind": "https"}},
    ],
    "world": [{"name": "cdn", "names": ["api.example.com", "evil.example.net"], "servers": ["https"]}],
}

# One HTTPS connection kept alive: "PATH" lines on stdin → "<local port> <status> <body repr>".
KEEPALIVE = r"""
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
conn = http.client.HTTPSConnection(sys.argv[1], 443, timeout=10, context=ctx)
for line in sys.stdin:
    conn.request("GET", line.strip())
    r = conn.getresponse()
    print(conn.sock.getsockname()[1], r.status, repr(r.read()), flush=True)
"""


def dns_egress() -> dict[str, Any]:
    return {
        "toEndpoints": [
            {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s-app": "kube-dns"}}
        ],
        "toPorts": [
            {"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*"}]}}
        ],
    }


def cnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def policies(terminating: str = "intercept", originating: str = "upstream-ca") -> list[dict[str, Any]]:
    https = {"toFQDNs": [{"matchName": "api.example.com"}]}
    return [
        cnp(
            "sni",
            {
                "endpointSelector": {"matchLabels": {"app": "client"}},
                "egress": [
                    dns_egress(),
                    {
                        **https,
                        "toPorts": [
                            {
                                "ports": [{"port": "443", "protocol": "TCP"}],
                                "serverNames": ["api.example.com"],
                            }
                        ],
                    },
                    {"toEndpoints": [{"matchLabels": {"app": "web"}}]},
                ],
            },
        ),
        cnp(
            "web-sni",
            {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [
                    {
                        "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}], "serverNames": ["web"]}],
                    }
                ],
            },
        ),
        cnp(
            "intercept",
            {
                "endpointSelector": {"matchLabels": {"app": "inspector"}},
                "egress": [
                    dns_egress(),
                    {
                        **https,
                        "toPorts": [
                            {
                                "ports": [{"port": "443", "protocol": "TCP"}],
                                "terminatingTLS": {"secret": {"name": terminating}},
                                "originatingTLS": {"secret": {"name": originating}},
                                "rules": {"http": [{"method": "GET", "path": "/"}]},
                            }
                        ],
                    },
                ],
            },
        ),
    ]


class TLSLab:
    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab = lab
        self.work = work
        self.ca = certs.authority(work, "test-ca")
        self.secrets = agent_lab.agent_dir(lab.state) / "secrets" / "default"
        self.server_cert = lab.state.directory / "certs" / "cdn.crt"
        self.web_cert = lab.state.directory / "certs" / "web.crt"
        self.serial = 0

    def write_secret(self, name: str, items: dict[str, Path]) -> None:
        """Write a secret directory atomically (a new directory renamed over the old one)."""
        tmp = self.secrets / f".{name}.new"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for item, source in items.items():
            shutil.copyfile(source, tmp / item)
        old = self.secrets / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if (self.secrets / name).exists():
            (self.secrets / name).rename(old)
        tmp.rename(self.secrets / name)
        shutil.rmtree(old, ignore_errors=True)

    def issue_intercept(self) -> Path:
        self.serial += 1
        cert, key = certs.issue(
            self.work / f"issued-{self.serial}", "intercept", self.ca, ["api.example.com"]
        )
        self.write_secret("intercept", {"tls.crt": cert, "tls.key": key})
        return cert

    def apply(self, docs: list[dict[str, Any]]) -> None:
        d = self.work / f"policies-{time.monotonic_ns()}"
        d.mkdir()
        for i, doc in enumerate(docs):
            (d / f"p{i}.yaml").write_text(yaml.safe_dump(doc))
        agent_lab.apply(self.lab.name, d)

    def world_ip(self, family: int) -> str:
        plan = next(w for w in self.lab.state.plan().worlds if w.name == "cdn")
        return (plan.v4 if family == 4 else plan.v6)[0]

    def run(self, pod: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.lab.exec(pod, argv, timeout=timeout)

    def s_client(self, pod: str, address: str, port: int, sni: str | None, cafile: Path) -> tuple[bool, str]:
        """openssl s_client: (handshake completed and verified, output)."""
        host = f"[{address}]" if ":" in address else address
        argv = [
            "openssl",
            "s_client",
            "-connect",
            f"{host}:{port}",
            "-CAfile",
            str(cafile),
            "-verify_return_error",
        ]
        argv += ["-servername", sni] if sni else ["-noservername"]
        out = self.run(pod, ["timeout", "5", *argv])
        text = out.stdout + out.stderr
        return out.returncode == 0 and "Verify return code: 0 (ok)" in text, text

    def curl(self, pod: str, url: str, *extra: str) -> tuple[int, str, str]:
        """(curl exit status, HTTP status, body)."""
        argv = self.lab.exec_argv(pod, ["curl", "-s", "-m", "5", "-w", "\n%{http_code}", *extra, url])
        out = subprocess.run(argv, capture_output=True, timeout=30, check=False)  # bytes: keep \r\n
        body, _, code = out.stdout.decode().rpartition("\n")
        return out.returncode, code, body


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSLab]:
    try:
        lab = Lab.up(parse_topology(TOPOLOGY, "<test_tls_lab>"), NAME)
        t = TLSLab(lab, tmp_path_factory.mktemp("tls"))
        t.issue_intercept()
        t.write_secret("upstream-ca", {"ca.crt": t.server_cert})
        t.apply(policies())
        for pod in ("client", "inspector"):  # the lab's DNS answers through the DNS proxy
            wait_for(
                f"{pod} resolves api.example.com",
                lambda p=pod: t.run(
                    p, ["dig", "+short", "+time=1", "+tries=1", "api.example.com"]
                ).stdout.strip(),  # type: ignore[misc]
                timeout=20,
            )
        yield t
    finally:
        down(NAME)


@pytest.mark.parametrize("family", [4, 6])
def test_sni_allowed_and_refused_on_one_address(tls: TLSLab, family: int) -> None:
    code, status, body = tls.curl(
        "client", "https://api.example.com/", f"-{family}", "--cacert", str(tls.server_cert)
    )
    assert (code, status) == (0, "200"), body
    assert "cdn" in body
    ip = tls.world_ip(family)
    host = f"[{ip}]" if family == 6 else ip
    # Same address, another name: refused by the SNI filter (the toFQDNs rule alone would allow it).
    code, status, _ = tls.curl(
        "client", "https://evil.example.net/", "--resolve", f"evil.example.net:443:{host}", "-k"
    )
    assert code in (35, 56) and status == "000", code
    ok, text = tls.s_client("client", ip, 443, "api.example.com", tls.server_cert)
    assert ok, text
    ok, text = tls.s_client("client", ip, 443, "evil.example.net", tls.server_cert)
    assert not ok and "BEGIN CERTIFICATE" not in text
    ok, text = tls.s_client("client", ip, 443, None, tls.server_cert)  # no SNI at all
    assert not ok and "BEGIN CERTIFICATE" not in text


def test_sni_pod_to_pod(tls: TLSLab) -> None:
    web = tls.lab.pod("web")
    for address in (web.v4, web.v6):
        assert address is not None
        ok, text = tls.s_client("client", address, 443, "web", tls.web_cert)
        assert ok, text
        ok, text = tls.s_client("client", address, 443, "other.web", tls.web_cert)
        assert not ok and "BEGIN CERTIFICATE" not in text


def test_interception_allows_and_denies_over_tls(tls: TLSLab) -> None:
    ca = str(tls.ca[0])
    code, status, body = tls.curl("inspector", "https://api.example.com/", "--cacert", ca)
    assert (code, status) == (0, "200"), body
    assert "cdn" in body
    code, status, body = tls.curl("inspector", "https://api.example.com/private", "--cacert", ca)
    assert (code, status, body) == (0, "403", DENIED)
    # The pod sees the interception certificate, not the server's.
    out = tls.run(
        "inspector",
        [
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "--cacert",
            str(tls.server_cert),
            "https://api.example.com/",
        ],
    )
    assert out.returncode == 60  # curl: peer certificate cannot be authenticated


def test_upstream_verified_against_ca(tls: TLSLab) -> None:
    """A CA that did not sign the server: the upstream handshake fails (503), never plaintext. (Its own
    secret name: a new TLS cluster, so no pooled upstream connection verified earlier is reused.)"""
    ca = str(tls.ca[0])
    tls.write_secret("wrong-ca", {"ca.crt": tls.ca[0]})
    try:
        tls.apply(policies(originating="wrong-ca"))
        code, status, body = tls.curl("inspector", "https://api.example.com/", "--cacert", ca)
        assert (code, status) == (0, "503"), body
    finally:
        tls.apply(policies())
    code, status, _ = tls.curl("inspector", "https://api.example.com/", "--cacert", ca)
    assert (code, status) == (0, "200")


def _serial(text: str) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial"], input=text, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_rotation_without_cutting_connections(tls: TLSLab) -> None:
    cafile = tls.ca[0]
    client = subprocess.Popen(
        tls.lab.exec_argv(
            "inspector", [sys.executable, "-I", "-c", KEEPALIVE, "api.example.com", str(cafile)]
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None

    def request(path: str) -> tuple[str, int, bytes]:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(path + "\n")
        client.stdin.flush()
        port, status, body = client.stdout.readline().split(" ", 2)
        return port, int(status), ast.literal_eval(body)

    try:
        before = request("/")
        assert before[1] == 200
        started = time.monotonic()
        new_cert = tls.issue_intercept()
        expected = _serial(new_cert.read_text())
        ip = tls.world_ip(4)

        def served() -> str:
            ok, text = tls.s_client("inspector", ip, 443, "api.example.com", cafile)
            found = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
            return _serial(found.group(0)) if ok and found else ""

        wait_for("the new certificate served", lambda: served() == expected, timeout=15)
        print(f"rotation: new certificate served {time.monotonic() - started:.2f}s after the files changed")
        after = request("/")
        assert after[0] == before[0] and after[1] == 200  # same connection, still served
        assert request("/private")[1:] == (403, DENIED.encode())
    finally:
        client.stdin.close()
        client.wait(timeout=10)
        client.stdout.close()


def test_missing_secret_fails_closed_with_field_path(tls: TLSLab) -> None:
    try:
        tls.apply(policies(terminating="absent"))
        status = json.loads(agent_lab.status_file(tls.lab.state, NODE).read_text())
        errors = json.dumps(status)
        assert "spec.egress[1].toPorts[0].terminatingTLS.secret" in errors, errors
        code, http_status, _ = tls.curl("inspector", "https://api.example.com/", "-k")
        assert code != 0 and http_status == "000"
        out = tls.run("inspector", ["curl", "-s", "-m", "5", "http://api.example.com:443/"])
        assert out.returncode != 0  # no plaintext fallback either
    finally:
        tls.apply(policies())
    code, status, _ = tls.curl("inspector", "https://api.example.com/", "--cacert", str(tls.ca[0]))
    assert (code, status) == (0, "200")


MTLS_PORT = 8443


def _mtls_policies(originating: str) -> list[dict[str, Any]]:
    """``policies()`` with the inspector also intercepting port 8443, re-originating with ``originating``."""
    docs = policies()
    docs[2]["spec"]["egress"].append(
        {
            "toFQDNs": [{"matchName": "api.example.com"}],
            "toPorts": [
                {
                    "ports": [{"port": str(MTLS_PORT), "protocol": "TCP"}],
                    "terminatingTLS": {"secret": {"name": "intercept"}},
                    "originatingTLS": {"secret": {"name": originating}},
                    "rules": {"http": [{"method": "GET", "path": "/"}]},
                }
            ],
        }
    )
    return docs


def test_upstream_client_certificate(tls: TLSLab) -> None:
    """originatingTLS with tls.crt/tls.key: Envoy presents the client certificate to a server that
    requires one signed by the test CA (the server echoes its subject); a secret with ca.crt only gets
    the handshake refused by the server: 503, never plaintext."""
    client = certs.issue(tls.work / "mtls", "client", tls.ca, ["l7gate-client"], usage="clientAuth")
    tls.write_secret("upstream-mtls", {"ca.crt": tls.server_cert, "tls.crt": client[0], "tls.key": client[1]})
    tls.write_secret("upstream-ca-only", {"ca.crt": tls.server_cert})
    cdn = next(w for w in tls.lab.state.plan().worlds if w.name == "cdn")
    spec = {"kind": "whoami", "port": MTLS_PORT, "tls": True}
    argv = [sys.executable, "-I", str(SERVE), "--hostname", "cdn-mtls", "--cert", str(tls.server_cert)]
    argv += ["--key", str(tls.server_cert.with_suffix(".key")), "--client-ca", str(tls.ca[0])]
    argv += ["--serve", json.dumps(spec)]
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{cdn.netns}", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, ca = f"https://api.example.com:{MTLS_PORT}/", str(tls.ca[0])
    try:
        assert server.stdout is not None
        assert "(tls)" in server.stdout.readline()  # listening
        tls.apply(_mtls_policies("upstream-mtls"))
        code, status, body = tls.curl("inspector", url, "--cacert", ca)
        assert (code, status) == (0, "200"), body
        assert "ClientCert: CN=l7gate-client" in body and "Hostname: cdn-mtls" in body
        code, status, body = tls.curl("inspector", f"{url}private", "--cacert", ca)
        assert (code, status, body) == (0, "403", DENIED)
        tls.apply(_mtls_policies("upstream-ca-only"))
        code, status, body = tls.curl("inspector", url, "--cacert", ca)
        assert (code, status) == (0, "503"), body
    finally:
        server.terminate()
        server.communicate(timeout=10)
        tls.apply(policies())


def test_h2_to_the_pod_on_an_intercepted_port(tls: TLSLab) -> None:
    """Envoy offers h2 on an intercepting port: curl --http2 speaks HTTP/2 to it and gets the same
    verdicts (200 with the server's body, 403 Access denied); the upstream stays HTTP/1.1."""
    ca = str(tls.ca[0])
    for path, status, body in (("/", "200", None), ("/private", "403", DENIED)):
        argv = ["curl", "-s", "-m", "5", "--http2", "--cacert", ca, "-w", "\n%{http_code} %{http_version}"]
        out = subprocess.run(
            tls.lab.exec_argv("inspector", [*argv, f"https://api.example.com{path}"]),
            capture_output=True,
            timeout=30,
            check=False,
        )
        text, _, trailer = out.stdout.decode().rpartition("\n")
        assert (out.returncode, trailer) == (0, f"{status} 2"), (out, trailer)
        assert text == body if body is not None else "cdn" in text
