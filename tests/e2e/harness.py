"""What the k8s and e2e tiers need around a cluster: CRDs, the operator's RBAC and identity, the operator
process, and one way to reach pods.

The operator runs as its ServiceAccount, never as admin: admin applies
deploy/rbac (ServiceAccount, the ClusterRole bound in the watched namespace with a
RoleBinding, the leader-election Role), then a TokenRequest gives a token for a
kubeconfig the operator process uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from faultlab.operator.reconcile.kube import ApiError, Kube, path

ROOT = Path(__file__).resolve().parents[2]
RBAC_DIR = ROOT / "deploy" / "rbac"
CRD_DIR = ROOT / "crds"
SA_NAME = "faultlab-operator"
T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2,
             describe: Callable[[], str] | None = None) -> T:
    """Poll until `condition()` is truthy; fail with `what` (and `describe()`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # a failing poll is a "not yet"
            last = exc
        if time.monotonic() > deadline:
            detail = f"\nlast error: {last!r}" if last else ""
            state = f"\n{describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{state}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- cluster setup


def ensure_namespace(kube: Kube, name: str) -> None:
    kube.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def apply(kube: Kube, obj: dict[str, Any]) -> dict[str, Any]:
    """Create, or replace the spec/data/rules of an existing object (enough for test fixtures)."""
    created, was_created = kube.ensure(obj)
    if was_created:
        return created
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    if not body:
        return created
    from faultlab.operator.reconcile.kube import object_path

    result: dict[str, Any] = kube.patch(object_path(obj), body)
    return result


def install_crds(kube: Kube, timeout: float = 60) -> None:
    for file in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(file.read_text())
        existing = kube.get(path("CustomResourceDefinition", name=crd["metadata"]["name"]))
        if existing is None:
            kube.create(crd)
        else:
            crd["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            kube.replace(path("CustomResourceDefinition", name=crd["metadata"]["name"]), crd)
        name = crd["metadata"]["name"]

        def established(name: str = name) -> bool:
            obj = kube.get(path("CustomResourceDefinition", name=name)) or {}
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in obj.get("status", {}).get("conditions", []))

        wait_for(established, timeout=timeout, what=f"CRD {name} to be established")
    # Discovery of the new group can lag behind Established.
    wait_for(lambda: kube.get("/apis/faultlab.dev/v1alpha1"), timeout=timeout, what="faultlab.dev discovery")


def rbac_objects(operator_ns: str, watched: list[str]) -> list[dict[str, Any]]:
    """deploy/rbac as the operator needs it here: its namespace set, the ClusterRole bound per watched namespace."""
    objs: list[dict[str, Any]] = []
    for name in ("service_account.yaml", "cluster_role.yaml", "leader_election.yaml"):
        objs.extend(d for d in yaml.safe_load_all((RBAC_DIR / name).read_text()) if d)
    template = yaml.safe_load((RBAC_DIR / "namespace_binding.yaml").read_text())
    for ns in watched:
        binding = json.loads(json.dumps(template))
        binding["metadata"]["namespace"] = ns
        objs.append(binding)
    for obj in objs:
        if obj["metadata"].get("namespace") == "faultlab-system":
            obj["metadata"]["namespace"] = operator_ns
        for subject in obj.get("subjects", []):
            subject["namespace"] = operator_ns
    return objs


def install_rbac(kube: Kube, operator_ns: str, watched: list[str]) -> None:
    ensure_namespace(kube, operator_ns)
    for ns in watched:
        ensure_namespace(kube, ns)
    for obj in rbac_objects(operator_ns, watched):
        apply(kube, obj)


def service_account_kubeconfig(kube: Kube, admin_kubeconfig: Path, namespace: str, out: Path,
                               name: str = SA_NAME, seconds: int = 7200) -> Path:
    """A kubeconfig with a TokenRequest token of the ServiceAccount (no admin credentials in it)."""
    reply = kube.create_at(path("ServiceAccount", namespace, name, "token"), {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}})
    token = reply["status"]["token"]
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
              "users": [{"name": user, "user": {"token": token}}],
              "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": user,
                                                             "namespace": namespace}}],
              "current-context": "operator", "preferences": {}}
    out.write_text(json.dumps(config, indent=2))
    out.chmod(0o600)
    return out


def wait_rbac_effective(kubeconfig: Path, namespace: str) -> None:
    """RBAC is cached by the authorizer for a moment: wait until the operator's identity can list pods."""
    sa = Kube.load(kubeconfig)
    try:
        wait_for(lambda: sa.list(path("Pod", namespace)) is not None, timeout=30,
                 what="the operator's RBAC to take effect")
    finally:
        sa.close()


# ---------------------------------------------------------------- the operator


class OperatorProcess:
    """`faultlab operator run` as a child process with the ServiceAccount's kubeconfig."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], lease_namespace: str, log_path: Path,
                 lease_duration: float = 3.0) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.lease_namespace = lease_namespace
        self.log_path = log_path
        self.lease_duration = lease_duration
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0

    def start(self) -> OperatorProcess:
        self.health_port, self.metrics_port = free_port(), free_port()
        argv = [sys.executable, "-m", "faultlab.operator.reconcile.commands", "run",
                *[f"--namespace={ns}" for ns in self.namespaces], f"--lease-namespace={self.lease_namespace}",
                f"--lease-duration={self.lease_duration}", f"--health-listen=127.0.0.1:{self.health_port}",
                f"--metrics-listen=127.0.0.1:{self.metrics_port}", f"--kubeconfig={self.kubeconfig}"]
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start\n".encode())
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=ROOT, start_new_session=True)
        return self

    def healthy(self) -> bool:
        import urllib.request

        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc and self.proc.returncode}:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_for(self.healthy, timeout=timeout, what="the operator's /healthz", describe=self.logs)

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release — as a crashed or evicted operator."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def logs(self, tail: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return "(no operator log)"


# ---------------------------------------------------------------- reaching pods


class PodAccess:
    """host:port of a pod's port as the test process can dial it.

    With the test kubelet that is the pod's own (loopback) IP; on a real cluster
    (kind) it is a `kubectl port-forward` kept open per pod.
    """

    def __init__(self, kube: Kube, *, kubectl: Path | None = None, kubeconfig: Path | None = None,
                 direct: bool = True) -> None:
        self.kube = kube
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig
        self.direct = direct
        self._forwards: dict[tuple[str, str, int], tuple[str, subprocess.Popen[bytes], str]] = {}

    def address(self, namespace: str, pod: str, port: int) -> str:
        obj = self.kube.get(path("Pod", namespace, pod))
        if obj is None or not obj.get("status", {}).get("podIP"):
            raise LookupError(f"pod {namespace}/{pod} has no IP yet")
        if self.direct:
            return f"{obj['status']['podIP']}:{port}"
        return self._forward(namespace, pod, port, obj["metadata"]["uid"])

    def _forward(self, namespace: str, pod: str, port: int, uid: str) -> str:
        key = (namespace, pod, port)
        known = self._forwards.get(key)
        if known is not None and known[2] == uid and known[1].poll() is None:
            return known[0]
        if known is not None:
            known[1].kill()
        assert self.kubectl is not None and self.kubeconfig is not None
        local = free_port()
        proc = subprocess.Popen([str(self.kubectl), f"--kubeconfig={self.kubeconfig}", "-n", namespace,
                                 "port-forward", f"pod/{pod}", f"{local}:{port}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        address = f"127.0.0.1:{local}"

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", local)) == 0

        wait_for(listening, timeout=15, what=f"port-forward to {namespace}/{pod}:{port}")
        self._forwards[key] = (address, proc, uid)
        return address

    def close(self) -> None:
        for _, proc, _ in self._forwards.values():
            with contextlib.suppress(OSError):
                proc.kill()
        self._forwards.clear()


def delete_namespace(kube: Kube, name: str) -> None:
    with contextlib.suppress(ApiError):
        kube.delete(path("Namespace", name=name))


class InstalledOperator:
    """The operator a real cluster already runs (the Helm chart's Deployment), behind OperatorProcess's interface.

    `kill()` deletes its pods with grace 0 (a crash: no Lease release); the Deployment brings a new one.
    """

    def __init__(self, kube: Kube, pods: PodAccess, namespace: str, deployment: str, kubectl: Path,
                 kubeconfig: Path) -> None:
        self.kube = kube
        self.pods = pods
        self.namespace = namespace
        self.deployment = deployment
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig

    def _selector(self) -> str:
        dep = self.kube.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployment}")
        if dep is None:
            raise AssertionError(f"no operator Deployment {self.namespace}/{self.deployment}: install the chart "
                                 f"first (FAULTLAB_E2E_OPERATOR=installed)")
        labels = dep["spec"]["selector"]["matchLabels"]
        return ",".join(f"{k}={v}" for k, v in labels.items())

    def _pods(self) -> list[dict[str, Any]]:
        return [p for p in self.kube.list(path("Pod", self.namespace), labels=self._selector())
                if not p["metadata"].get("deletionTimestamp")]

    def start(self) -> InstalledOperator:
        return self

    def healthy(self) -> bool:
        return any(any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get(
            "conditions", [])) for p in self._pods())

    def wait_healthy(self, timeout: float = 120) -> None:
        wait_for(self.healthy, timeout=timeout, what="the installed operator to be Ready", describe=self.logs)

    def metrics(self) -> str:
        import urllib.request

        pod = self._pods()[0]["metadata"]["name"]
        address = self.pods.address(self.namespace, pod, 9090)
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def kill(self) -> None:
        for pod in self._pods():
            self.kube.delete(path("Pod", self.namespace, pod["metadata"]["name"]), grace_seconds=0)

    def stop(self) -> None:
        return None  # it belongs to the cluster

    def logs(self, tail: int = 60) -> str:
        out = subprocess.run([str(self.kubectl), f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, "logs",
                              f"deployment/{self.deployment}", f"--tail={tail}"], capture_output=True, text=True,
                             timeout=30, check=False)
        return out.stdout + out.stderr
