"""The test kubelet against the real kube-apiserver: binding, env, volumes, probes, restarts, deletion."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultlab.operator.reconcile.kube import Kube, path
from tests.e2e.harness import ensure_namespace, wait_for
from tests.support.k8s_control_plane import ControlPlane
from tests.support.kubelet import TestKubelet, describe, expand

NS = "faultlab-kubelet-test"

# Prints its environment, then serves TCP on $(POD_IP):8000 until SIGTERM (which it logs).
SERVER = """
import os, signal, socket, sys
print("ENV", {k: v for k, v in os.environ.items() if k.startswith(("MY_", "FAULTLAB_"))}, flush=True)
open(os.path.join(os.environ["DATA"], "marker"), "w").write("x")
signal.signal(signal.SIGTERM, lambda *a: (print("TERM", flush=True), sys.exit(0)))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8000)); s.listen()
while True:
    s.accept()[0].close()
"""


@pytest.fixture(scope="module")
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    k = Kube.load(control_plane.admin_kubeconfig)
    ensure_namespace(k, NS)
    yield k
    k.close()


@pytest.fixture(scope="module")
def kubelet(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestKubelet]:
    kl = TestKubelet(kube, tmp_path_factory.mktemp("kubelet"), node_name="kubelet-test-node",
                     namespaces={NS}).start()
    yield kl
    kl.stop()


def pod(name: str, command: list[str], args: list[str], **extra: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "ignored:latest", "command": command, "args": args,
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}], **extra.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {"containers": [container], "volumes": [{"name": "data", "emptyDir": {}}],
                     "terminationGracePeriodSeconds": 5, **extra}}


def phase(kube: Kube, name: str) -> dict[str, Any]:
    obj = kube.get(path("Pod", NS, name)) or {}
    return obj.get("status") or {}


def ready(kube: Kube, name: str) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in phase(kube, name).get("conditions", []))


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("$(MISSING)", env) == "$(MISSING)"


def test_pod_runs_with_env_volumes_probe_hosts_and_is_deleted(kube: Kube, kubelet: TestKubelet) -> None:
    kube.ensure({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NS},
                 "stringData": {"token": "s3cret"}})
    kube.ensure({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS},
                 "data": {"FAULTLAB_TICK_MS": "7"}})
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "MY_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
           {"name": "MY_LISTEN", "value": "$(POD_IP):8000"},
           {"name": "MY_WILDCARD", "value": "0.0.0.0:9000"},
           {"name": "DATA", "value": "/data"}]
    spec = pod("web", ["python"], ["-c", SERVER, "$(POD_IP)"], hostname="web", subdomain="svc",
               container={"env": env, "envFrom": [{"configMapRef": {"name": "c"}}],
                          "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1}})
    kube.create(spec)
    wait_for(lambda: ready(kube, "web"), timeout=30, what="pod web Ready", describe=lambda: describe(kube, NS))
    st = phase(kube, "web")
    ip = st["podIP"]
    assert st["phase"] == "Running" and ip.startswith("127.") and st["podIPs"] == [{"ip": ip}]
    obj = kube.get(path("Pod", NS, "web"))
    assert obj is not None and obj["spec"]["nodeName"] == "kubelet-test-node"
    logs = wait_for(lambda: "ENV" in (text := kubelet.logs(NS, "web")) and text, timeout=10, what="env printed")
    assert "'MY_NAME': 'web'" in logs and "'MY_TOKEN': 's3cret'" in logs and f"'MY_LISTEN': '{ip}:8000'" in logs
    assert f"'MY_WILDCARD': '{ip}:9000'" in logs
    assert "'FAULTLAB_TICK_MS': '7'" in logs and "'FAULTLAB_HOSTS_FILE'" in logs
    hosts = kubelet.hosts_file.read_text()
    assert f"{ip} web.svc.{NS}.svc.cluster.local web.svc.{NS}.svc" in hosts
    data_dirs = list(Path(kubelet.workdir).glob(f"pods/{NS}_web_*/volumes/data/marker"))
    assert data_dirs, "the emptyDir path in env was rewritten to a directory of the pod"
    pid = kubelet.pid(NS, "web")
    assert pid is not None
    kube.delete(path("Pod", NS, "web"))
    wait_for(lambda: kube.get(path("Pod", NS, "web")) is None, timeout=30, what="pod web to be removed")
    wait_for(lambda: not _alive(pid), timeout=10, what="the process to be gone")
    assert "TERM" in kubelet.logs(NS, "web"), "a graceful delete sends SIGTERM first"
    assert ip not in kubelet.hosts_file.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_failing_container_is_restarted(kube: Kube, kubelet: TestKubelet) -> None:
    kube.create(pod("crasher", ["python3"], ["-c", "import sys; print('up', flush=True); sys.exit(3)"]))

    def restarted() -> bool:
        statuses = phase(kube, "crasher").get("containerStatuses", [])
        return bool(statuses) and statuses[0]["restartCount"] >= 2

    wait_for(restarted, timeout=30, what="restarts of a crashing container", describe=lambda: describe(kube, NS))
    last = phase(kube, "crasher")["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 3
    kube.delete(path("Pod", NS, "crasher"), grace_seconds=0)
    wait_for(lambda: kube.get(path("Pod", NS, "crasher")) is None, timeout=30, what="crasher removed")


def test_never_restart_policy_reports_success(kube: Kube, kubelet: TestKubelet) -> None:
    kube.create(pod("once", ["python3"], ["-c", "print('done')"], restartPolicy="Never"))
    wait_for(lambda: phase(kube, "once").get("phase") == "Succeeded", timeout=30, what="phase Succeeded",
             describe=lambda: describe(kube, NS))
    kube.delete(path("Pod", NS, "once"), grace_seconds=0)


def test_missing_secret_waits_then_starts(kube: Kube, kubelet: TestKubelet) -> None:
    env = [{"name": "MY_TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]
    kube.create(pod("waiter", ["python3"], ["-c", "import time; time.sleep(60)"], container={"env": env}))
    wait_for(lambda: any(c["state"].get("waiting", {}).get("reason") == "CreateContainerConfigError"
                         for c in phase(kube, "waiter").get("containerStatuses", [])),
             timeout=20, what="CreateContainerConfigError while the Secret is missing")
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later", "namespace": NS},
                 "stringData": {"token": "t"}})
    wait_for(lambda: phase(kube, "waiter").get("phase") == "Running", timeout=20, what="start once it exists")
    kube.delete(path("Pod", NS, "waiter"), grace_seconds=0)
    assert kube.get(path("Node", name="kubelet-test-node")) is not None
