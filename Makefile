# loraplane: the two commands are `make demo` and `make test`; the rest are their parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help

LORAPLANE_HOME ?= $(HOME)/.cache/loraplane
export LORAPLANE_HOME
VENV := $(LORAPLANE_HOME)/venv
PY := $(VENV)/bin/python
WHEELS ?= $(abspath $(CURDIR)/../shared/wheels)
# The venv is cached outside the checkout and keyed by what installs it; .venv links to it.
VENV_STAMP := $(VENV)/.loraplane-$(shell cat pyproject.toml hack/venv.sh 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: .venv help venv lint crds crds-check test unit integration e2e bench demo demo-down \
        cluster-build cluster-up cluster-down cluster-status fixtures clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## the Python venv (project, test tools, CPU vLLM) in $LORAPLANE_HOME/venv
$(VENV_STAMP): pyproject.toml hack/venv.sh
	@WHEELS="$(WHEELS)" bash hack/venv.sh "$(VENV)" "$(CURDIR)"
	@touch $@

# Re-point the editable install at this checkout (a fresh clone reuses the cached venv).
.venv: $(VENV_STAMP)
	@ln -sfn "$(VENV)" .venv
	@bash hack/venv.sh --link "$(VENV)" "$(CURDIR)"

lint: .venv ## ruff on everything, mypy --strict on operator/
	$(PY) -m ruff check operator tests hack bench
	$(PY) -m ruff format --check operator tests hack bench
	$(PY) -m mypy operator/loraplane

crds: .venv ## regenerate crds/ from the pydantic models
	$(PY) -m loraplane.api.crd --out crds

crds-check: .venv ## fail with a diff when crds/ is stale
	$(PY) -m loraplane.api.crd --check crds

fixtures: .venv ## the tiny model and its adapters in $LORAPLANE_HOME (built once)
	$(PY) -c 'from tests.support.tinymodel import ensure_tiny_model; from tests.support.adapters import ensure_adapters; print(ensure_tiny_model()); print(len(ensure_adapters()), "adapters")'

unit: .venv ## unit tests (no cluster, no vLLM)
	$(PY) -m pytest tests/unit -q

integration: .venv cluster-up fixtures ## integration tests on the local cluster with real vLLM
	$(PY) -m pytest tests/integration -q --durations=12

e2e: .venv cluster-up fixtures ## end-to-end tests (helm chart, operator in a pod)
	@if ls tests/e2e/test_*.py >/dev/null 2>&1; then $(PY) -m pytest tests/e2e -q; else echo "e2e: no tests yet"; fi

test: lint crds-check unit integration e2e ## the whole suite: lint, CRD drift, unit, integration, e2e

bench: .venv cluster-up fixtures ## benchmarks (print ratios measured in one run)
	$(PY) -m bench

cluster-build: ## build etcd, kube-* , kubectl and helm from Go modules (cached)
	bash hack/build-cluster.sh

cluster-up: .venv ## start or repair the local cluster (control plane + process node); idempotent
	bash hack/cluster.sh up

cluster-down: ## stop the local cluster; no process, mount or netns left (hack/cluster.sh down --purge also empties etcd)
	bash hack/cluster.sh down

cluster-status: ## one line per component
	bash hack/cluster.sh status

demo: ## bring up the cluster, install the chart, deploy a model and adapters, show them served
	@echo "make demo is not built yet: it needs the Helm chart and the operator image mapping"
	@echo "(the demo issue). Today: 'make cluster-up', then 'make test' shows the system working."
	@exit 1

demo-down: ## remove what make demo installed
	@echo "make demo-down: nothing to remove until the demo exists"

clean: ## remove caches in the checkout (not $LORAPLANE_HOME)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .venv
