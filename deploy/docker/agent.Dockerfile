# The l7gate node agent image (controller + eBPF datapath + node services).
#   docker build -f deploy/docker/agent.Dockerfile -t l7gate/agent:0.1.0 .
# Not built or run in l7gate's CI (no container runtime there); see docs/kubernetes.md.
# agent.Dockerfile.dockerignore (BuildKit) keeps .venv, .git and the tests out of the context.
# bcc comes from Debian (python3-bpfcc, for Debian's Python 3.11): the venv sees it through
# --system-site-packages. Kernel headers are the host's (/lib/modules and /usr/src are mounted).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc libbpfcc bpftool iproute2 nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/l7gate
COPY pyproject.toml README.md ./
COPY l7 l7
COPY xds xds
COPY dnsproxy dnsproxy
COPY bpf bpf
RUN python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && ln -s /opt/venv/bin/l7gate /usr/local/bin/l7gate
ENTRYPOINT ["l7gate"]
CMD ["agent", "--help"]
