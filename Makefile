# Backbone — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= uv
export UV_PYTHON ?= python3

.PHONY: help setup up status down test test-fast lint format typecheck bench bench-anomaly e2e images clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install uv if missing, then create .venv with every workspace package (locked)
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --all-packages --locked

up: setup ## Start NATS JetStream + PostgreSQL + every service locally (Ctrl-C stops)
	$(UV) run backbone up

status: ## Show the running local stack
	$(UV) run backbone status

down: ## Stop a local stack started in another terminal
	$(UV) run backbone down

test: setup ## Run the whole test suite (real nats-server and PostgreSQL)
	$(UV) run pytest -q -p no:cacheprovider

test-fast: setup ## Run the tests that need no fault injection (skips the slow fault/e2e tests)
	$(UV) run pytest -q -m "not slow"

e2e: setup ## Run only the black-box end-to-end tests
	$(UV) run pytest -q tests/e2e

lint: ## ruff (lint + format check) and mypy --strict
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy libs/common/src services/*/src

format: ## Apply ruff's fixes and formatting
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

bench: setup ## Run the benchmarks; tables printed, JSON written under bench/results/
	$(UV) run python bench/run_all.py

bench-anomaly: setup ## Score the anomaly detector on NAB (../shared/data/nab)
	$(UV) run python bench/bench_anomaly.py

IMAGE_TAG ?= dev
images: ## Build every service image from the repo root (needs a Docker engine; none on the test machines)
	@for dockerfile in services/*/Dockerfile; do \
	  svc=$$(basename $$(dirname $$dockerfile)); \
	  echo "docker build -f $$dockerfile -t backbone/$$svc:$(IMAGE_TAG) ."; \
	  docker build -f $$dockerfile -t backbone/$$svc:$(IMAGE_TAG) . || exit 1; \
	done

clean: ## Remove local state (.backbone/) and caches
	rm -rf .backbone .pytest_cache .mypy_cache .ruff_cache
