# l7gate — one entry point. Every target runs the idempotent set-up first (apt, venv, Envoy, bcc).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup demo test conformance bench lint clean-lab images

setup:
	@bash deploy/setup.sh

# The main job: every scenario of the seed documents, played for real in a lab (`l7gate demo`).
demo: setup
	@$(VENV)/bin/l7gate demo

# Every test, including ruff, mypy and import-linter, and the tests that need root and the kernel.
test: setup
	@$(PY) -m pytest -p no:cacheprovider tests

# Checks against reference material outside the repository (the seed posts, Cilium's CRD schemas):
# `make conformance REFERENCE=DIR`, or L7GATE_REFERENCE=DIR, default ../shared. Fails, never skips,
# when the directory is missing.
REFERENCE := $(or $(L7GATE_REFERENCE),../shared)
conformance: setup
	@L7GATE_REFERENCE="$(abspath $(REFERENCE))" $(PY) -m pytest -p no:cacheprovider tests/conformance

bench: setup
	@$(PY) -m tests.bench.run --output bench/results.json

lint: setup
	@$(VENV)/bin/ruff check . && $(VENV)/bin/mypy && $(VENV)/bin/lint-imports

# The agent and Envoy images, built here without a registry or a daemon (docs/images.md): a Debian base
# made with mmdebstrap, `buildah bud`, a smoke test of each image, OCI archives in build/images/, then
# the archives checked in a container storage of their own (tests/images/built/).
images: setup
	@bash deploy/images/build.sh
	@$(PY) -m pytest -p no:cacheprovider tests/images/built
