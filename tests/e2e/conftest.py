"""e2e: RaftCluster and ChaosExperiment through the operator, on a real kube-apiserver.

In `make test` the cluster is the control-plane fixture, pods run on the test
kubelet (tests/support/kubelet.py) and are reached at their loopback IPs, and the
operator runs as a local process under its ServiceAccount (deploy/rbac, a
TokenRequest kubeconfig) — never as admin.

On an existing cluster (FAULTLAB_K8S_EXISTING=<kubeconfig>, e.g. kind) pods are
reached through `kubectl port-forward`; with FAULTLAB_E2E_OPERATOR=installed the
tests use the operator the cluster already runs (the Helm chart's Deployment in
FAULTLAB_E2E_OPERATOR_NAMESPACE, named FAULTLAB_E2E_OPERATOR_DEPLOYMENT).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from faultlab.operator.reconcile.kube import Kube
from tests.e2e.harness import (
    InstalledOperator,
    OperatorProcess,
    PodAccess,
    delete_namespace,
    ensure_namespace,
    install_crds,
    install_rbac,
    service_account_kubeconfig,
    wait_rbac_effective,
)
from tests.support.k8s_control_plane import ControlPlane
from tests.support.k8s_pytest import control_plane, kubeconfig  # noqa: F401
from tests.support.kubelet import TestKubelet

E2E_NS = "faultlab-e2e"
OPERATOR_NS = "faultlab-e2e-system"


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane) -> Iterator[Kube]:  # noqa: F811
    kube = Kube.load(control_plane.admin_kubeconfig)
    yield kube
    kube.close()


@pytest.fixture(scope="session")
def crds(admin: Kube) -> None:
    if os.environ.get("FAULTLAB_E2E_OPERATOR") != "installed":  # the chart installed its own
        install_crds(admin)


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane, admin: Kube,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestKubelet | None]:
    if not control_plane.owned:  # an existing cluster runs its own pods
        yield None
        return
    kl = TestKubelet(admin, tmp_path_factory.mktemp("kubelet"), namespaces={E2E_NS}).start()
    yield kl
    kl.stop()


@pytest.fixture(scope="session")
def pods(admin: Kube, kubelet: TestKubelet | None, control_plane: ControlPlane) -> Iterator[PodAccess]:  # noqa: F811
    access = PodAccess(admin, kubectl=control_plane.kubectl_path, kubeconfig=control_plane.admin_kubeconfig,
                       direct=kubelet is not None)
    yield access
    access.close()


@pytest.fixture(scope="session")
def operator(admin: Kube, crds: None, kubelet: TestKubelet | None, control_plane: ControlPlane,  # noqa: F811
             pods: PodAccess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    if os.environ.get("FAULTLAB_E2E_OPERATOR") == "installed":
        ensure_namespace(admin, E2E_NS)
        installed = InstalledOperator(admin, pods, os.environ.get("FAULTLAB_E2E_OPERATOR_NAMESPACE", "faultlab-system"),
                                      os.environ.get("FAULTLAB_E2E_OPERATOR_DEPLOYMENT", "faultlab-operator"),
                                      control_plane.kubectl_path, control_plane.admin_kubeconfig)
        installed.wait_healthy()
        yield installed  # type: ignore[misc]
        return
    install_rbac(admin, OPERATOR_NS, [E2E_NS])
    work = tmp_path_factory.mktemp("operator")
    config = service_account_kubeconfig(admin, control_plane.admin_kubeconfig, OPERATOR_NS,
                                        work / "operator.kubeconfig")
    wait_rbac_effective(config, E2E_NS)
    op = OperatorProcess(config, [E2E_NS], OPERATOR_NS, work / "operator.log").start()
    op.wait_healthy()
    yield op
    op.stop()
    if control_plane.owned:
        delete_namespace(admin, E2E_NS)


