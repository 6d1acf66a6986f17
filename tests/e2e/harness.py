"""What the k8s and e2e tiers need around a cluster: CRDs, the operator's RBAC and identity, the operator
process, and one way to reach pods.

The operator runs as the Helm chart installs it, never as admin: `chart_operator` renders
helm/faultlab (`helm template`) for the watched namespaces and takes its ServiceAccount, Roles,
ClusterRoles and bindings plus the Deployment's command line, environment and grace period;
admin applies the RBAC, a TokenRequest gives that ServiceAccount's token for the kubeconfig the
operator process uses. A verb missing from the chart (deploy/rbac, copied by tools/sync_chart.py)
is a 403 the tests see. On a cluster that runs the chart's Deployment
(FAULTLAB_E2E_OPERATOR=installed) `InstalledOperator` stands in for the process.

Either way `kill()` stops the operator as a pod deletion does: SIGTERM, then SIGKILL once the
chart's terminationGracePeriodSeconds has passed.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from faultlab.operator.reconcile.kube import ApiError, Kube, path
from tests.support import chart_rbac

if TYPE_CHECKING:
    from tests.support.kubelet import TestKubelet

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
    """deploy/rbac itself (the chart's source), its namespace set, the ClusterRole bound per watched namespace.

    For tests of deploy/rbac's own files; the e2e operator runs under the chart's rendering (`chart_operator`).
    """
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


@dataclass
class ChartOperator:
    """The operator as `helm template` of helm/faultlab renders it for these namespaces."""

    namespace: str  # the release namespace: its ServiceAccount and leader Lease live there
    watched: list[str]  # empty: cluster-wide mode
    rbac: list[dict[str, Any]]  # ServiceAccount, (Cluster)Roles and their bindings
    service_account: str
    args: list[str]  # the container's args (after its command, `faultlab`)
    env: dict[str, str]  # the container's env with the Deployment's fieldRefs resolved
    grace_seconds: float  # terminationGracePeriodSeconds: SIGTERM to SIGKILL


def chart_operator(namespace: str, watched: list[str], *, release: str = chart_rbac.DEFAULT_RELEASE) -> ChartOperator:
    objects = chart_rbac.render(chart_rbac.chart_values(watched), release=release, namespace=namespace)
    rbac = [o for o in objects if o.get("kind") in chart_rbac.RBAC_KINDS]
    deployment = chart_rbac.deployment(objects)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    if container.get("command") != ["faultlab"]:
        raise AssertionError(f"the chart's operator command is {container.get('command')}, expected ['faultlab']")
    fields = {"metadata.namespace": namespace, "metadata.name": f"{deployment['metadata']['name']}-e2e"}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") in fields:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"the chart sets env {var['name']} from {var.get('valueFrom')}: teach "
                                 "tests/e2e/harness.py chart_operator to resolve it")
    return ChartOperator(namespace=namespace, watched=list(watched), rbac=rbac,
                         service_account=chart_rbac.service_account_name(rbac),
                         args=[str(a) for a in container.get("args", [])], env=env,
                         grace_seconds=float(pod.get("terminationGracePeriodSeconds", 30)))


def install_chart_rbac(kube: Kube, chart: ChartOperator) -> None:
    """Namespaces (the operator's and the watched ones), then the chart's RBAC objects, as admin."""
    for ns in (chart.namespace, *chart.watched):
        ensure_namespace(kube, ns)
    for obj in chart.rbac:
        apply(kube, obj)


def remove_cluster_rbac(kube: Kube, chart: ChartOperator) -> None:
    """The chart's cluster-scoped grants (namespaced ones go with their namespaces)."""
    for obj in chart.rbac:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            with contextlib.suppress(ApiError):
                kube.delete(path(obj["kind"], name=obj["metadata"]["name"]))


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
    """`faultlab operator run` as a child process: the chart's command line and environment, with the
    ServiceAccount's kubeconfig and loopback health/metrics ports."""

    def __init__(self, kubeconfig: Path, chart: ChartOperator, log_path: Path, lease_duration: float = 3.0) -> None:
        self.kubeconfig = kubeconfig
        self.chart = chart
        self.log_path = log_path
        self.lease_duration = lease_duration  # short, so a successor of a SIGKILLed one takes over soon
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0
        self.last_stop = ""  # how the last kill()/stop() ended, for failure messages

    def argv(self) -> list[str]:
        local = {"--health-listen": f"127.0.0.1:{self.health_port}",
                 "--metrics-listen": f"127.0.0.1:{self.metrics_port}"}
        args = []
        for arg in self.chart.args:
            flag, eq, value = arg.partition("=")
            args.append(f"{flag}={local[flag]}" if eq and flag in local and value else arg)
        return [sys.executable, "-m", "faultlab.operator.cli", *args, f"--kubeconfig={self.kubeconfig}",
                f"--lease-duration={self.lease_duration}"]

    def start(self) -> OperatorProcess:
        self.health_port, self.metrics_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        env.update(self.chart.env)
        env["PYTHONUNBUFFERED"] = "1"
        argv = self.argv()
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(argv[1:])}\n".encode())
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
        """Stop it as deleting its pod does: SIGTERM to the operator (the container's PID 1), SIGKILL to
        whatever is left once the chart's terminationGracePeriodSeconds has passed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=self.chart.grace_seconds)
            self.last_stop = f"exited {code} {time.monotonic() - t0:.1f}s after SIGTERM"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.last_stop = f"still running {self.chart.grace_seconds:.0f}s after SIGTERM: SIGKILLed"
        with contextlib.suppress(ProcessLookupError):  # the rest of the container dies with PID 1
            os.killpg(self.proc.pid, signal.SIGKILL)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {self.last_stop}\n".encode())

    def crash(self) -> None:
        """SIGKILL: no cleanup, no Lease release — a process that dies without warning (an OOM kill)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.last_stop = "SIGKILLed"

    def stop(self) -> None:
        self.kill()

    def logs(self, tail: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return "(no operator log)"


# ---------------------------------------------------------------- reaching pods


class PodAccess:
    """host:port of a pod's port as the test process can dial it.

    With the test kubelet that is the pod's own (loopback) IP; on a real cluster
    (kind) it is a `kubectl port-forward` kept open per pod. `logs()` reads a pod's
    container log the same two ways.
    """

    def __init__(self, kube: Kube, *, kubectl: Path | None = None, kubeconfig: Path | None = None,
                 direct: bool = True, kubelet: TestKubelet | None = None) -> None:
        self.kube = kube
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig
        self.direct = direct
        self.kubelet = kubelet
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

    def logs(self, namespace: str, pod: str, container: str) -> str:
        """The container's output in the pod that has this name now (not in earlier pods of that name)."""
        obj = self.kube.get(path("Pod", namespace, pod))
        if obj is None:
            raise LookupError(f"no pod {namespace}/{pod}")
        if self.kubelet is not None:
            return self.kubelet.logs(namespace, pod, container, uid=obj["metadata"]["uid"])
        assert self.kubectl is not None and self.kubeconfig is not None
        out = subprocess.run([str(self.kubectl), f"--kubeconfig={self.kubeconfig}", "-n", namespace, "logs",
                              f"pod/{pod}", "-c", container], capture_output=True, text=True, timeout=30,
                             check=False)
        return out.stdout

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

    `kill()` deletes its pods as `kubectl delete pod` does (their own grace period: SIGTERM, SIGKILL
    after terminationGracePeriodSeconds) and waits until they are gone; the Deployment brings a new one.
    """

    def __init__(self, kube: Kube, pods: PodAccess, namespace: str, deployment: str, kubectl: Path,
                 kubeconfig: Path) -> None:
        self.kube = kube
        self.pods = pods
        self.namespace = namespace
        self.deployment = deployment
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig
        self.last_stop = ""

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
        pods = self._pods()
        t0 = time.monotonic()
        for pod in pods:
            self.kube.delete(path("Pod", self.namespace, pod["metadata"]["name"]), uid=pod["metadata"]["uid"])
        uids = {p["metadata"]["uid"] for p in pods}
        grace = max([float(p["spec"].get("terminationGracePeriodSeconds", 30)) for p in pods] or [0])

        def gone() -> bool:
            return not uids & {p["metadata"]["uid"] for p in self.kube.list(path("Pod", self.namespace),
                                                                              labels=self._selector())}

        wait_for(gone, timeout=grace + 60, what=f"the deleted operator pods to terminate (grace {grace:.0f}s)",
                 describe=self.logs)
        self.last_stop = f"{len(pods)} pod(s) deleted, gone after {time.monotonic() - t0:.1f}s"

    def stop(self) -> None:
        return None  # it belongs to the cluster

    def logs(self, tail: int = 60) -> str:
        out = subprocess.run([str(self.kubectl), f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, "logs",
                              f"deployment/{self.deployment}", f"--tail={tail}"], capture_output=True, text=True,
                             timeout=30, check=False)
        return out.stdout + out.stderr
