"""The OCI archives ``make images`` saves in build/images/, checked as a registry or a node would get them:
each archive is loaded into a container storage of its own (a temporary directory, not the machine's), so
that every layer comes from the archive, and ``deploy/images/smoke.sh`` runs in it — the agent image
imports l7gate and bcc, answers ``l7gate --version`` and carries no Envoy; the Envoy image answers
``envoy --version`` with the pinned version. The smoke test also refuses the wrong image and an agent
image with an ``envoy`` file added.

Run by ``make images`` after the build (not by ``make test``: pyproject's norecursedirs). Needs root
(buildah's overlay storage) and the archives: fails, never skips, when they are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
OUT = Path(os.environ.get("L7GATE_IMAGES_DIR", REPO / "build" / "images"))
SMOKE = REPO / "deploy" / "images" / "smoke.sh"
TIMEOUT = 240.0

pytestmark = pytest.mark.root


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def archive(kind: str) -> str:
    path = OUT / f"{kind}-{version()}.oci.tar"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make images` first", pytrace=False)
    return f"oci-archive:{path}"


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment for buildah with a container storage in a temporary directory; on teardown its
    working containers and images are removed (so no overlay stays mounted), then the directory."""
    root = tmp_path_factory.mktemp("storage")
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
    try:
        yield env
    finally:
        buildah(env, "rm", "--all", check=False)
        buildah(env, "rmi", "--all", "--force", check=False)
        left = buildah(env, "containers", "--all", "--quiet", check=False)
        shutil.rmtree(root)
        assert left == "", f"buildah containers left: {left}"


def buildah(env: dict[str, str], *args: str, check: bool = True) -> str:
    """``buildah ARGS`` in the storage ``env`` names; its standard output, stripped."""
    done = subprocess.run(
        ["buildah", *args], env=env, capture_output=True, text=True, timeout=TIMEOUT, check=check
    )
    return done.stdout.strip()


def smoke(env: dict[str, str], kind: str, image: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SMOKE), kind, image],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_the_agent_archive_passes_the_smoke_test(storage: dict[str, str]) -> None:
    done = smoke(storage, "agent", archive("agent"))
    assert done.returncode == 0, done.stderr
    assert f"l7gate {version()}, bcc and l7gate import, no Envoy" in done.stdout


def test_the_envoy_archive_passes_the_smoke_test(storage: dict[str, str]) -> None:
    pin = subprocess.run(
        ["bash", "-c", f"repo={REPO}; . {REPO}/deploy/images/names.sh; echo $L7GATE_ENVOY_VERSION"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    done = smoke(storage, "envoy", archive("envoy"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"envoy {pin}")


def test_the_smoke_test_refuses_the_wrong_image(storage: dict[str, str]) -> None:
    as_agent = smoke(storage, "agent", archive("envoy"))
    assert as_agent.returncode != 0
    assert "l7gate or bcc does not import" in as_agent.stderr
    as_envoy = smoke(storage, "envoy", archive("agent"))
    assert as_envoy.returncode != 0
    assert "envoy --version failed" in as_envoy.stderr


def test_the_smoke_test_refuses_an_agent_image_with_envoy(storage: dict[str, str]) -> None:
    """The agent image with one file named ``envoy`` added: the smoke test names it."""
    ctr = buildah(storage, "from", "--quiet", archive("agent"))
    try:
        buildah(
            storage, "run", "--isolation", "chroot", ctr, "--", "sh", "-c", "echo x >/usr/local/bin/envoy"
        )
        buildah(storage, "commit", "--quiet", ctr, "localhost/l7gate/agent-with-envoy:test")
    finally:
        buildah(storage, "rm", ctr)
    try:
        done = smoke(storage, "agent", "localhost/l7gate/agent-with-envoy:test")
    finally:
        buildah(storage, "rmi", "localhost/l7gate/agent-with-envoy:test")
    assert done.returncode != 0
    assert "carries Envoy: /usr/local/bin/envoy" in done.stderr


def test_each_archive_is_loaded_from_its_own_layers(storage: dict[str, str]) -> None:
    """Pulled from the archives alone, the storage holds both images by the names ``make images`` gave."""
    for kind in ("agent", "envoy"):
        buildah(storage, "pull", "--quiet", archive(kind))
    listed = buildah(storage, "images", "--format", "{{.Name}}:{{.Tag}}").split()
    assert sorted(listed) == sorted(f"localhost/l7gate/{k}:{version()}" for k in ("agent", "envoy"))
