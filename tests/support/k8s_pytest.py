"""Pytest fixtures for a real Kubernetes cluster, shared by tests/k8s and tests/e2e.

Import them into a conftest::

    from tests.support.k8s_pytest import control_plane, kubeconfig  # noqa: F401

``control_plane`` is session-scoped: it builds (cached) and starts etcd,
kube-apiserver and kube-controller-manager once, and stops them at the end.
With ``FAULTLAB_K8S_EXISTING=/path/to/kubeconfig`` it reuses that cluster
instead and starts nothing. Under ``CI=true`` a cluster that cannot be built or
started fails the tests; elsewhere a failed *build* (no Go, no network) skips
them with the reason, and a failed *start* still fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.k8s_control_plane import BuildError, ControlPlane, ControlPlaneError, reuse, start


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def open_control_plane(tmp_root: Path) -> ControlPlane:
    """Start or reuse a cluster, turning failures into pytest outcomes (fail in CI, skip a build failure)."""
    existing = os.environ.get("FAULTLAB_K8S_EXISTING")
    try:
        if existing:
            return reuse(Path(existing), tmp_root)
        return start(tmp_root)
    except BuildError as exc:
        if in_ci():
            pytest.fail(f"CI=true: cannot build the Kubernetes control plane: {exc}", pytrace=False)
        pytest.skip(f"cannot build the Kubernetes control plane: {exc}")
    except ControlPlaneError as exc:
        pytest.fail(f"the Kubernetes control plane did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    root = tmp_path_factory.mktemp("k8s")
    cp = open_control_plane(root)
    try:
        yield cp
    finally:
        cp.stop()
        if cp.owned:
            shutil.rmtree(root / "etcd-data", ignore_errors=True)


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    """Path of an admin kubeconfig for the cluster."""
    return control_plane.admin_kubeconfig
