# Real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kubectl, helm) built from the Go module proxy into ~/.cache/faultlab/k8s.
# Included from the root Makefile:  include tools/k8s/k8s.mk

PY ?= .venv/bin/python
K8S_DIR ?= .faultlab/k8s

.PHONY: k8s-build k8s-up k8s-down k8s-status

k8s-build: ## build (or find cached) control-plane binaries
	bash tools/k8s/build.sh

k8s-up: ## start a control plane in the background; eval the printed export line
	@$(PY) -m tests.support.k8s_control_plane up --dir $(K8S_DIR)

k8s-down: ## stop what k8s-up started
	@$(PY) -m tests.support.k8s_control_plane down --dir $(K8S_DIR)

k8s-status:
	@$(PY) -m tests.support.k8s_control_plane status --dir $(K8S_DIR)
