"""e2e: RaftCluster and ChaosExperiment through the operator, on a real kube-apiserver.

In `make test` the cluster is the control-plane fixture, pods run on the test
kubelet (tests/support/kubelet.py) and are reached at their loopback IPs, and the
operator runs as a local process exactly as the Helm chart would run it (the
command line, environment and grace period of its Deployment) under the chart's
rendered ServiceAccount, Role, RoleBinding and leader-election Role for the
watched namespace (`helm template helm/faultlab`, a TokenRequest kubeconfig) —
never as admin, so a verb the chart does not grant fails a test.

On an existing cluster (FAULTLAB_K8S_EXISTING=<kubeconfig>, e.g. kind) pods are
reached through `kubectl port-forward`; with FAULTLAB_E2E_OPERATOR=installed the
tests use the operator the cluster already runs (the Helm chart's Deployment in
FAULTLAB_E2E_OPERATOR_NAMESPACE, named FAULTLAB_E2E_OPERATOR_DEPLOYMENT), which
runs under the chart's RBAC by construction.
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
    chart_operator,
    delete_namespace,
    ensure_namespace,
    install_chart_rbac,
    install_crds,
    remove_cluster_rbac,
    service_account_kubeconfig,
    wait_rbac_effective,
)
from tests.support.k8s_control_plane import BuildError, ControlPlane
from tests.support.k8s_pytest import control_plane, in_ci, kubeconfig  # noqa: F401
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
                       direct=kubelet is not None, kubelet=kubelet)
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
    try:
        chart = chart_operator(OPERATOR_NS, [E2E_NS])
    except BuildError as exc:  # no helm here (a chart helm refuses is a failure)
        if in_ci():
            pytest.fail(f"CI=true: cannot render the Helm chart the operator runs under: {exc}", pytrace=False)
        pytest.skip(f"cannot render the Helm chart the operator runs under: {exc}")
    install_chart_rbac(admin, chart)
    work = tmp_path_factory.mktemp("operator")
    config = service_account_kubeconfig(admin, control_plane.admin_kubeconfig, OPERATOR_NS,
                                        work / "operator.kubeconfig", name=chart.service_account)
    wait_rbac_effective(config, E2E_NS)
    op = OperatorProcess(config, chart, work / "operator.log").start()
    try:
        op.wait_healthy()
        yield op
    finally:
        op.stop()
        remove_cluster_rbac(admin, chart)
        if control_plane.owned:
            delete_namespace(admin, E2E_NS)
