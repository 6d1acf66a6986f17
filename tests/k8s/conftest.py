"""The k8s tier runs against a real kube-apiserver (see tests/support/k8s_control_plane.py)."""

from tests.support.k8s_pytest import control_plane, kubeconfig  # noqa: F401
