#!/usr/bin/env bash
# Set-up for `make images` only (the tests and the demo do not need it): the Debian packages that
# build images without a container daemon or a registry — mmdebstrap (the base from Debian's
# mirror), podman (import, save) and buildah (bud, from, run). Idempotent, fast when done.
set -euo pipefail
say() { printf '[images-setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "[images-setup] must run as root (apt, container storage)" >&2
  exit 1
fi

packages=(mmdebstrap podman buildah)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -q
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
fi
say "ready (mmdebstrap $(mmdebstrap --version | awk '{print $2}'), buildah $(buildah --version | awk '{print $3}'), podman $(podman --version | awk '{print $3}'))"
