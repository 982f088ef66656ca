# l7gate — one entry point. Every target runs the idempotent set-up first (apt, venv, Envoy, bcc).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup demo test bench lint clean-lab

setup:
	@bash deploy/setup.sh

# The main job: every scenario of the seed documents, played for real in a lab (`l7gate demo`).
demo: setup
	@$(VENV)/bin/l7gate demo

# Every test, including ruff, mypy and import-linter, and the tests that need root and the kernel.
test: setup
	@$(PY) -m pytest -p no:cacheprovider tests

bench: setup
	@$(PY) -m tests.bench.run --output bench/results.json

lint: setup
	@$(VENV)/bin/ruff check . && $(VENV)/bin/mypy && $(VENV)/bin/lint-imports
