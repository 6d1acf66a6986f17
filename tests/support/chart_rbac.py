"""The Helm chart's rendered objects, for tests that run the operator as the chart would.

The e2e tier runs its operator under exactly the ServiceAccount and RBAC the chart installs
(tests/e2e/harness.py ``chart_operator``: these objects plus the Deployment's command line,
environment and grace period), and tests/k8s/test_helm.py checks the grants with
``kubectl auth can-i``, so a verb missing from ``deploy/rbac/`` (the chart's source, copied
by ``tools/sync_chart.py``) fails a test instead of a user's cluster::

    from tests.support import chart_rbac

    objects = chart_rbac.rbac_objects("faultlab-system", watch_namespaces=["team-a"])
    chart_rbac.apply(control_plane, objects)               # kubectl apply (namespaces must exist)
    kubeconfig = chart_rbac.service_account_kubeconfig(
        control_plane, "faultlab-system", chart_rbac.service_account_name(objects), tmp_path / "operator.kubeconfig")
    args = chart_rbac.operator_args(watch_namespaces=["team-a"])   # ["operator", "run", "--namespace=team-a", ...]

helm comes from the control plane's cache (``tools/k8s/build.sh``, the same discovery as
``tests.support.k8s_control_plane``: ``FAULTLAB_K8S_BIN`` or the cached/built bin dir).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.k8s_control_plane import REPO_ROOT, BuildError, ControlPlane, cached_bin_dir, ensure_binaries

CHART = REPO_ROOT / "helm" / "faultlab"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
DEFAULT_RELEASE = "faultlab"

Obj = dict[str, Any]


class HelmError(RuntimeError):
    """helm refused the chart or the values; the message is helm's."""


def helm_binary() -> Path:
    """The helm built with the control plane (``FAULTLAB_K8S_BIN``, the cache, or a build).

    Against an existing cluster (``FAULTLAB_K8S_EXISTING``, e.g. kind) a helm on PATH is used
    before building one, as kubectl is.
    """
    override = os.environ.get("FAULTLAB_K8S_BIN")
    if override:
        path = Path(override).resolve() / "helm"
        if not path.is_file():
            raise BuildError(f"FAULTLAB_K8S_BIN={override} has no helm")
        return path
    cached = cached_bin_dir() / "helm"
    if cached.is_file():
        return cached
    found = shutil.which("helm") if os.environ.get("FAULTLAB_K8S_EXISTING") else None
    if found is not None:
        return Path(found).resolve()
    path = ensure_binaries() / "helm"
    if not path.is_file():
        raise BuildError(f"tools/k8s/build.sh did not produce {path}")
    return path


def run_helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs helm with its caches in a temp dir (tests never touch ~/.config/helm)."""
    home = Path(tempfile.gettempdir()) / "faultlab-helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)  # fmt: skip
    if check and proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}")
    return proc


def template(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = "faultlab-system",
    include_crds: bool = False,
    chart: Path = CHART,
) -> str:
    """``helm template`` output (multi-document YAML) for these values."""
    args = ["template", release, str(chart), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as handle:
        json.dump(dict(values or {}), handle)  # JSON is YAML
        handle.flush()
        return run_helm(*args, "--values", handle.name).stdout


def render(values: Mapping[str, Any] | None = None, **kwargs: Any) -> list[Obj]:
    """The chart's objects (dicts) for these values; see :func:`template` for the options."""
    return [doc for doc in yaml.safe_load_all(template(values, **kwargs)) if doc]


def chart_values(watch_namespaces: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Values selecting the RBAC mode: cluster-wide when ``watch_namespaces`` is empty/None."""
    return {"watchNamespaces": list(watch_namespaces or []), **extra}


def rbac_objects(
    namespace: str,
    watch_namespaces: Sequence[str] | None = None,
    *,
    release: str = DEFAULT_RELEASE,
) -> list[Obj]:
    """The ServiceAccount (in ``namespace``), Roles, ClusterRoles and bindings the chart installs.

    Cluster-wide mode when ``watch_namespaces`` is empty/None, otherwise a Role + RoleBinding in
    each watched namespace. ClusterRole names carry ``namespace``, so releases in different
    namespaces of one test cluster do not collide.
    """
    objects = render(chart_values(watch_namespaces), release=release, namespace=namespace)
    return [obj for obj in objects if obj.get("kind") in RBAC_KINDS]


def service_account_name(objects: Sequence[Obj]) -> str:
    names = [obj["metadata"]["name"] for obj in objects if obj.get("kind") == "ServiceAccount"]
    if len(names) != 1:
        raise ValueError(f"expected one ServiceAccount among the chart's objects, found {names}")
    return str(names[0])


def deployment(objects: Sequence[Obj]) -> Obj:
    found = [obj for obj in objects if obj.get("kind") == "Deployment"]
    if len(found) != 1:
        raise ValueError(f"expected one Deployment among the chart's objects, found {len(found)}")
    return found[0]


def operator_args(
    watch_namespaces: Sequence[str] | None = None, *, values: Mapping[str, Any] | None = None
) -> list[str]:
    """The operator container's command-line arguments (after ``faultlab``) as the chart sets them."""
    merged = {**chart_values(watch_namespaces), **dict(values or {})}
    container = deployment(render(merged))["spec"]["template"]["spec"]["containers"][0]
    return [str(arg) for arg in container.get("args", [])]


def apply(cp: ControlPlane, objects: Sequence[Obj], *, dry_run: bool = False) -> str:
    """``kubectl apply`` the objects as admin (server-side dry run with ``dry_run``); returns kubectl's output."""
    doc = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    args = ["apply", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    return cp.kubectl(*args, input=json.dumps(doc)).stdout


def service_account_kubeconfig(
    cp: ControlPlane, namespace: str, name: str, path: Path, *, duration: str = "4h"
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` (a TokenRequest token)."""
    token = cp.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
    view = json.loads(cp.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout)
    cluster = view["clusters"][0]
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user, "namespace": namespace}}],
        "current-context": user,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path
