# faultlab — `make demo` and `make test` are the two commands a newcomer needs.
# Everything a test needs is installed from here (no hand-installed tools).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST := $(PY) -m pytest -p no:cacheprovider
SIM_SEEDS ?= 500

.PHONY: help venv demo test test-unit test-sim test-integration test-k8s test-e2e lint protos protos-check \
        crds docs bench bench-raft soak clean

help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-18s %s\n",$$1,$$2}'

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install faultlab with its test and dev tools

demo: $(STAMP) ## start a local 3-node Raft cluster, break it twice, print the checked verdicts
	$(VENV)/bin/faultlab demo

# Every tier runs; under CI=true a tier that cannot run fails (tests/conftest.py).
test: $(STAMP) lint protos-check test-unit test-sim test-integration test-k8s test-e2e ## lint, then every test tier

test-unit: $(STAMP) ## fast pure tests, packaging and contract checks
	$(PYTEST) tests/unit -q

test-sim: $(STAMP) ## deterministic Raft simulation ($(SIM_SEEDS) seeds) and lab scenarios
	FAULTLAB_SIM_SEEDS=$(SIM_SEEDS) $(PYTEST) tests/sim -q

test-integration: $(STAMP) ## real node processes on loopback
	$(PYTEST) tests/integration -q

test-k8s: $(STAMP) ## real etcd + kube-apiserver + controller-manager (built once, cached)
	$(PYTEST) tests/k8s -q

test-e2e: $(STAMP) ## end-to-end suite against the test control plane (or any KUBECONFIG cluster)
	@if [ -d tests/e2e ] && ls tests/e2e/test_*.py >/dev/null 2>&1; then $(PYTEST) tests/e2e -q; \
	else echo "e2e: no tests yet"; fi

soak: $(STAMP) ## 100,000 simulation seeds (long)
	$(PY) -m tests.sim.soak --seeds 100000

lint: $(STAMP) ## ruff, mypy on the typed packages, buf (protos), actionlint (workflows), helm lint (chart)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy operator/api nodes/raft/core.py operator/chaos operator/reconcile operator/runtime/kubernetes.py
	bash tools/buf-lint.sh
	bash tools/actionlint.sh
	$(PY) tools/gen_crds.py --check
	$(PY) tools/sync_chart.py --check
	$(PY) tools/gen_docs.py --check
	"$$(bash tools/k8s/build.sh | tail -n1)/helm" lint --strict helm/faultlab

protos: $(STAMP) ## regenerate Python code from protos/*.proto
	$(PY) tools/gen_protos.py

crds: $(STAMP) ## regenerate crds/ from operator/api and copy them (and deploy/rbac rules) into the chart
	$(PY) tools/gen_crds.py
	$(PY) tools/sync_chart.py

docs: $(STAMP) ## regenerate docs/chaos-reference.md from the ChaosExperiment models
	$(PY) tools/gen_docs.py

protos-check: $(STAMP) ## fail if generated protos are stale
	$(PY) tools/gen_protos.py --check

bench: bench-raft ## every benchmark

bench-raft: $(STAMP) ## faultlab Raft vs PySyncObj vs etcd, side by side (3 interleaved rounds, about 13 min)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/raft/run.py --rounds 3 --duration 5 --warmup 1 --clients 1,16,64

clean: ## remove local state (.faultlab) and build output
	rm -rf .faultlab build dist *.egg-info

include tools/k8s/k8s.mk
