"""Shared by the DNS/toFQDNs lab tests: pod-side scripts, applying policies, the AnyIP world host.

The "fresh" world host answers on every address of :data:`ANYIP` (a local route in its namespace, and
a route to it in the lab's fabric namespace), so DNS records can hand out over a thousand distinct
addresses that all accept connections. Everything stays inside the lab's own namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from l7 import procs
from l7.lab import Lab
from l7.lab import agents as agent_lab

REPO = Path(__file__).resolve().parents[2]
SEEDS = REPO / "deploy" / "examples" / "seeds"
LAB_FILES = REPO / "deploy" / "lab"

FRESH_V4 = "192.168.95.10"
ANYIP = ipaddress.ip_network("192.168.96.0/21")
ECHO_PORT = 8443
CURL_TIMEOUT = 28
DIG_NO_SERVER = 9  # dig: no reply from the server

# An echo server on 0.0.0.0:8443 (it answers on every local address, the AnyIP range included).
ECHO_SERVER = r"""
import socket, threading
def serve(c):
    with c:
        while True:
            d = c.recv(65535)
            if not d:
                return
            c.sendall(d)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8443)); s.listen(1024)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# A DNS server that answers every A query for its name with an address and, in the answer section,
# an extra A record for *another* name (what a malicious or confused server could send). argv: a JSON
# file with {"ip": ..., "other_name": ..., "other_ip": ...}, read per query.
ROGUE_DNS = r"""
import json, socket, struct, sys
conf = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53))
def name(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.rstrip(".").split(".")) + b"\0"
while True:
    q, a = s.recvfrom(4096)
    try:
        c = json.load(open(conf))
    except OSError:
        continue
    end = 12
    while q[end]:
        end += q[end] + 1
    question = q[12:end + 5]
    head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 2, 0, 0)
    rr1 = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(c["ip"])
    rr2 = name(c["other_name"]) + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(c["other_ip"])
    s.sendto(head + question + rr1 + rr2, a)
"""

# Lookup + connect in a loop, connecting the instant the answer arrives. argv: count, name pattern
# with {i}, port. A connection whose first SYN is dropped completes only after the SYN is sent again
# (1 s later) or not at all: a connect taking >= 0.9 s counts as failed (the SYN-ACK comes from the
# kernel, so a busy machine does not slow it down like that). Prints JSON: ok, failed, seconds.
FIRST_CONNECTION = r"""
import json, socket, sys, time
count, pattern, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ok, failed, ips, slowest, t0 = 0, [], set(), 0.0, time.monotonic()
for i in range(count):
    name = pattern.format(i=i)
    try:
        ip = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        failed.append([name, "lookup", str(exc)]); continue
    ips.add(ip)
    c = socket.socket(); c.settimeout(5.0)
    try:
        started = time.monotonic()
        stage = "connect"
        c.connect((ip, port))
        stage = "echo"
        took = time.monotonic() - started
        slowest = max(slowest, took)
        if took >= 0.9:
            raise TimeoutError(f"connect took {took:.2f}s: the first SYN was dropped")
        c.sendall(b"x"); assert c.recv(1) == b"x"; ok += 1
    except (OSError, AssertionError) as exc:
        failed.append([name, ip, stage, repr(exc)])
    finally:
        c.close()
print(json.dumps({"ok": ok, "failed": len(failed), "first": failed[:5], "ips": len(ips),
                  "slowest_connect": slowest, "seconds": time.monotonic() - t0}))
"""


# Open a connection, wait, then try a new one while the old one stays open. argv: name, port, wait.
EXPIRY = r"""
import json, socket, sys, time
name, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ip = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
old = socket.create_connection((ip, port), timeout=2)
old.sendall(b"a"); first = old.recv(1) == b"a"
deadline = time.monotonic() + wait
while time.monotonic() < deadline:  # keep the old connection busy
    old.sendall(b"b"); assert old.recv(1) == b"b"; time.sleep(0.5)
new = socket.socket(); new.settimeout(2)
try:
    new.connect((ip, port)); fresh = "connected"
except TimeoutError:
    fresh = "timeout"
except OSError as exc:
    fresh = repr(exc)
old.sendall(b"c"); still = old.recv(1) == b"c"
print(json.dumps({"ip": ip, "first": first, "new": fresh, "old_still_works": still}))
"""


def seed(name: str, namespace: str | None = None) -> dict[str, Any]:
    """A seed policy verbatim; ``namespace`` set as ``kubectl apply -n`` would when it has none."""
    doc: dict[str, Any] = yaml.safe_load((SEEDS / f"{name}.yaml").read_text())
    if namespace is not None:
        doc["metadata"].setdefault("namespace", namespace)
    return doc


def cnp(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def dns_to(*apps: str, pattern: str = "*") -> dict[str, Any]:
    """An egress rule: DNS (port 53, any protocol) to the kube-system pods with these k8s-app labels."""
    return {
        "toEndpoints": [
            {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": app}}
            for app in apps
        ],
        "toPorts": [
            {"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": pattern}]}}
        ],
    }


def apply(lab: str, tmp_path: Path, *docs: dict[str, Any]) -> None:
    d = tmp_path / "policies"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    for i, doc in enumerate(docs):
        (d / f"p{i}.yaml").write_text(yaml.safe_dump(doc))
    agent_lab.apply(lab, d)


def run(lab: Lab, pod: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return lab.exec(pod, argv, timeout=timeout)


def dig(lab: Lab, pod: str, *args: str) -> tuple[int, str]:
    out = run(lab, pod, ["dig", "+time=2", "+tries=1", *args], timeout=15)
    return out.returncode, out.stdout


def status_of(text: str) -> str:
    """The rcode name of dig's output (``NOERROR``, ``REFUSED``, ...)."""
    for line in text.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    return "none"


def curl(lab: Lab, pod: str, url: str, *extra: str) -> int:
    """curl's exit status (0: got an answer, 28: timed out)."""
    out = run(lab, pod, ["curl", "-sk", "-m", "3", "-o", "/dev/null", *extra, url], timeout=15)
    return out.returncode


def python(lab: Lab, pod: str, script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    out = run(lab, pod, [sys.executable, "-I", "-c", script, *args], timeout=timeout)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def agent_status(lab: Lab, node: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(agent_lab.status_file(lab.state, node).read_text())
    return data


def fresh_records(count: int, ttl: int = 300) -> list[dict[str, Any]]:
    """``h<i>.fresh.test`` → the i-th address of :data:`ANYIP` (skipping the network address)."""
    hosts = list(ANYIP.hosts())
    assert count <= len(hosts) - 1
    return [{"name": f"h{i}.fresh.test", "a": [str(hosts[i])], "ttl": ttl} for i in range(count)]


def start_anyip(lab: Lab) -> procs.Process:
    """Route :data:`ANYIP` to the fresh world host, make it local there, start the echo server."""
    world = lab.plan.world("fresh")
    subprocess.run(["ip", "-n", world.netns, "route", "add", "local", str(ANYIP), "dev", "lo"], check=True)
    subprocess.run(
        [
            "ip",
            "-n",
            lab.plan.fabric_netns,
            "route",
            "add",
            str(ANYIP),
            "via",
            FRESH_V4,
            "dev",
            world.fabric_if,
        ],
        check=True,
    )
    return procs.spawn(["ip", "netns", "exec", world.netns, sys.executable, "-I", "-c", ECHO_SERVER])


def stop(proc: procs.Process) -> None:
    proc.stop()
