"""A test kubelet: runs the pods of a real kube-apiserver as local processes.

There is no container runtime in the k8s tier, so this stands in for kubelet and
scheduler (as Strimzi's MockKube does): it registers a Node and keeps it Ready,
binds pending pods to it, and runs each container's `command` + `args` with its
environment as a local process — the image is ignored and `faultlab-node` /
`faultlab` map to this venv's console scripts. Each pod gets its own loopback IP
(127.b.x.y, b random per kubelet); a wildcard listen address in env or args (`0.0.0.0:PORT`,
`[::]:PORT`) becomes that IP, as the pod's own network namespace would confine
it. A hosts file (`<hostname>.<subdomain>.<ns>.svc` and shorter forms), named to
the processes by FAULTLAB_HOSTS_FILE, stands in for cluster DNS. It resolves env
`valueFrom` (secretKeyRef, configMapKeyRef, fieldRef), `envFrom` and `$(VAR)`
references, gives emptyDir/configMap/secret volumes a temporary directory (a
path under a volume's mountPath in env or args is rewritten to it) and each
PersistentVolumeClaim object a directory that outlives its pods (keyed by the
claim's uid: a claim deleted and made again under the same name starts empty, as
with a dynamically provisioned volume whose reclaimPolicy is Delete; a pod waits,
Pending, while its claim is missing or being deleted), reports
phase, pod IPs and readiness from the readiness probe (grpc via
grpc.health.v1, tcpSocket, httpGet), restarts containers per restartPolicy and
failing liveness probes, and on deletion stops the processes (SIGTERM, SIGKILL
after the grace period) and removes the pod object.

What it cannot do locally, and does not pretend to: container isolation — the
securityContext (runAsNonRoot, readOnlyRootFilesystem, dropped capabilities,
seccomp) and resource limits are not enforced; processes run as the test's user
and see the real root filesystem. Crash-loop back-off is short (0.2 s doubling
up to 5 s) to keep tests fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faultlab.operator.reconcile.kube import ApiError, Kube, path

JSON = dict[str, Any]
VENV_BIN = Path(sys.executable).parent
COMMAND_MAP = {"faultlab-node": "faultlab-node", "faultlab": "faultlab", "python": "python", "python3": "python3"}
VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
WILDCARD = re.compile(r"^(?:0\.0\.0\.0|\[::\])?:(\d+)$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known names are replaced, `$$` escapes, unknown refs stay as written."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return VAR_REF.sub(repl, value)


def _port_free(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
            return True
        except OSError:
            return False


SETPRIV = shutil.which("setpriv")  # util-linux: sets PR_SET_PDEATHSIG, then execs the command


def _with_parent_death(argv: list[str]) -> list[str]:
    """Processes die with the test run even when it is SIGKILLed. Done by exec'ing through setpriv, not a
    preexec_fn: Python code between fork and exec in a process with gRPC threads can crash the child."""
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv] if SETPRIV else argv


class ConfigError(Exception):
    """A container cannot start yet (missing Secret/ConfigMap key, unknown command): CreateContainerConfigError."""


# ---------------------------------------------------------------- probes


def run_probe(probe: JSON, ip: str, ports: dict[str, int]) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))

    def port_of(value: Any) -> int:
        return ports[value] if isinstance(value, str) and not value.isdigit() else int(value)

    try:
        if "grpc" in probe:
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            spec = probe["grpc"]
            with grpc.insecure_channel(f"{ip}:{port_of(spec['port'])}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=spec.get("service", "")), timeout=timeout)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        if "tcpSocket" in probe:
            with socket.create_connection((ip, port_of(probe["tcpSocket"]["port"])), timeout=timeout):
                return True
        if "httpGet" in probe:
            spec = probe["httpGet"]
            url = f"http://{ip}:{port_of(spec['port'])}{spec.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return 200 <= resp.status < 400
        if "exec" in probe:
            return subprocess.run(probe["exec"]["command"], timeout=timeout, capture_output=True).returncode == 0
    except Exception:
        return False
    return False


@dataclass
class ProbeState:
    spec: JSON
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0

    def due(self, t: float) -> bool:
        return t >= self.next_at

    def record(self, ok: bool, t: float) -> None:
        self.next_at = t + float(self.spec.get("periodSeconds", 10))
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1


# ---------------------------------------------------------------- containers


@dataclass
class Container:
    spec: JSON
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started_mono: float = 0.0
    restart_count: int = 0
    ready: bool = False
    last_state: JSON = field(default_factory=dict)
    terminated: JSON | None = None  # set when exited and not (yet) restarted
    waiting: JSON | None = None
    restart_at: float = 0.0
    backoff: float = 0.2
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def reset_probes(self, t: float) -> None:
        self.ready = False
        if "readinessProbe" in self.spec:
            p = self.spec["readinessProbe"]
            self.readiness = ProbeState(p, next_at=t + float(p.get("initialDelaySeconds", 0)))
        if "livenessProbe" in self.spec:
            p = self.spec["livenessProbe"]
            self.liveness = ProbeState(p, next_at=t + float(p.get("initialDelaySeconds", 0)))

    def status(self) -> JSON:
        state: JSON
        if self.proc is not None and self.proc.poll() is None:
            state = {"running": {"startedAt": self.started_at}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated}
        else:
            state = {"waiting": self.waiting or {"reason": "ContainerCreating"}}
        out: JSON = {"name": self.name, "image": self.spec.get("image", ""), "imageID": "",
                     "ready": self.ready, "started": "running" in state, "restartCount": self.restart_count,
                     "state": state}
        if self.proc is not None:
            out["containerID"] = f"faultlab://{self.proc.pid}"
        if self.last_state:
            out["lastState"] = self.last_state
        return out


class PodWorker(threading.Thread):
    """Runs one pod (by uid) from binding to removal."""

    def __init__(self, kubelet: TestKubelet, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}-{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.ip = ""
        self.dir = kubelet.workdir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.volumes: dict[str, Path] = {}
        self.containers: list[Container] = []
        self.stopping = threading.Event()
        self.deleted = threading.Event()  # the object is already gone: nothing to finalize
        self.lock = threading.Lock()
        self._last_status: JSON | None = None
        self._conditions: dict[str, JSON] = {}
        self.start_time = now()
        self.message = ""  # why the pod cannot start yet (status.message)

    # ---- setup

    def _setup_volumes(self) -> bool:
        """Directories for the pod's volumes; False when the pod was deleted while waiting for a claim."""
        for vol in self.pod["spec"].get("volumes", []):
            target: Path | None = self.dir / "volumes" / vol["name"]
            if "persistentVolumeClaim" in vol:
                target = self._claim_dir(vol["persistentVolumeClaim"]["claimName"])
                if target is None:
                    return False
            assert target is not None
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol or "secret" in vol:
                self._fill_volume(vol, target)
            self.volumes[vol["name"]] = target
        return True

    def _claim_dir(self, claim: str) -> Path | None:
        """The directory of the claim object named `claim` (it outlives pods, not the claim); waits while the
        claim is missing or being deleted, as a pod stays Pending until its volume can be attached."""
        root = self.kubelet.workdir / "pvc" / self.namespace
        while not self.stopping.is_set():
            pvc = self.kubelet.kube.get(path("PersistentVolumeClaim", self.namespace, claim))
            if pvc is not None and not pvc["metadata"].get("deletionTimestamp"):
                mine = f"{claim}_{pvc['metadata']['uid']}"  # "_" never occurs in a claim's name
                for old in root.glob(f"{claim}_*"):  # earlier claims of this name are deleted: so is their data
                    if old.name != mine:
                        shutil.rmtree(old, ignore_errors=True)
                self.message = ""
                return root / mine
            self.message = (f'persistentvolumeclaim "{claim}" not found' if pvc is None
                            else f'persistentvolumeclaim "{claim}" is being deleted')
            self._publish()
            self.stopping.wait(0.5)
        return None

    def _fill_volume(self, vol: JSON, target: Path) -> None:
        import base64

        if "configMap" in vol:
            obj = self.kubelet.kube.get(path("ConfigMap", self.namespace, vol["configMap"]["name"]))
            data = (obj or {}).get("data", {})
        else:
            obj = self.kubelet.kube.get(path("Secret", self.namespace, vol["secret"]["secretName"]))
            data = {k: base64.b64decode(v).decode() for k, v in (obj or {}).get("data", {}).items()}
        if obj is None:
            raise ConfigError(f"volume {vol['name']}: its {'ConfigMap' if 'configMap' in vol else 'Secret'} "
                              f"does not exist")
        for key, value in data.items():
            (target / key).write_text(value)

    def _mounts(self, spec: JSON) -> list[tuple[str, Path]]:
        mounts = [(m["mountPath"].rstrip("/"), self.volumes[m["name"]] / m.get("subPath", ""))
                  for m in spec.get("volumeMounts", []) if m["name"] in self.volumes]
        return sorted(mounts, key=lambda m: -len(m[0]))

    def _rewrite(self, value: str, mounts: list[tuple[str, Path]]) -> str:
        wildcard = WILDCARD.match(value)
        if wildcard:  # all of a pod's interfaces = its own IP here
            return f"{self.ip}:{wildcard.group(1)}"
        for mount_path, host in mounts:
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(host) + value[len(mount_path):]
        return value

    def _field(self, field_path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        simple = {"metadata.name": self.name, "metadata.namespace": self.namespace, "metadata.uid": self.uid,
                  "spec.nodeName": spec.get("nodeName", self.kubelet.node_name),
                  "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
                  "status.hostIP": "127.0.0.1", "status.podIP": self.ip, "status.podIPs": self.ip}
        if field_path in simple:
            return simple[field_path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path)
        if match:
            return str(meta.get(match.group(1), {}).get(match.group(2), ""))
        raise ConfigError(f"fieldRef {field_path} is not supported by the test kubelet")

    def _key(self, kind: str, ref: JSON) -> str | None:
        obj = self.kubelet.kube.get(path(kind, self.namespace, ref["name"]))
        if obj is None:
            if ref.get("optional"):
                return None
            raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
        data = obj.get("data", {})
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise ConfigError(f'couldn\'t find key {ref["key"]} in {kind} {self.namespace}/{ref["name"]}')
        import base64

        value = data[ref["key"]]
        return base64.b64decode(value).decode() if kind == "Secret" else str(value)

    def _environment(self, spec: JSON) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key not in source:
                    continue
                obj = self.kubelet.kube.get(path(kind, self.namespace, source[key]["name"]))
                if obj is None:
                    if source[key].get("optional"):
                        continue
                    raise ConfigError(f'{kind.lower()} "{source[key]["name"]}" not found')
                import base64

                for k, v in obj.get("data", {}).items():
                    env[prefix + k] = base64.b64decode(v).decode() if kind == "Secret" else str(v)
        for item in spec.get("env", []):
            name = item["name"]
            if "value" in item:
                env[name] = expand(str(item["value"]), env)
            elif "valueFrom" in item:
                source = item["valueFrom"]
                value: str | None
                if "fieldRef" in source:
                    value = self._field(source["fieldRef"]["fieldPath"])
                elif "secretKeyRef" in source:
                    value = self._key("Secret", source["secretKeyRef"])
                elif "configMapKeyRef" in source:
                    value = self._key("ConfigMap", source["configMapKeyRef"])
                else:
                    raise ConfigError(f"env {name}: valueFrom {sorted(source)} is not supported by the test kubelet")
                if value is not None:
                    env[name] = value
            else:
                env[name] = ""
        return env

    def _argv_and_env(self, spec: JSON) -> tuple[list[str], dict[str, str], str]:
        pod_env = self._environment(spec)
        mounts = self._mounts(spec)
        pod_env = {k: self._rewrite(v, mounts) for k, v in pod_env.items()}
        command = [expand(c, pod_env) for c in spec.get("command", [])]
        args = [expand(a, pod_env) for a in spec.get("args", [])]
        argv = [self._rewrite(a, mounts) for a in command + args]
        if not command:
            raise ConfigError(f"container {spec['name']}: no command (the test kubelet cannot run an image's "
                              f"entrypoint); set command")
        exe = argv[0]
        if exe in COMMAND_MAP:
            argv[0] = str(VENV_BIN / COMMAND_MAP[exe])
        elif not os.path.isabs(exe) and shutil.which(exe) is None:
            raise ConfigError(f"container {spec['name']}: command {exe!r} is not found on this machine")
        env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.dir / "home"),
               "LANG": "C.UTF-8", "HOSTNAME": self.pod["spec"].get("hostname", self.name),
               "PYTHONUNBUFFERED": "1", "FAULTLAB_HOSTS_FILE": str(self.kubelet.hosts_file), **pod_env}
        workdir = self._rewrite(spec.get("workingDir", ""), mounts) or str(self.dir / "home")
        return argv, env, workdir

    # ---- processes

    def _start(self, c: Container) -> None:
        try:
            argv, env, cwd = self._argv_and_env(c.spec)
        except (ConfigError, ApiError) as exc:
            c.waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
            c.restart_at = time.monotonic() + 1.0
            return
        Path(cwd).mkdir(parents=True, exist_ok=True)
        with open(c.log_path, "ab") as log:
            log.write(f"--- {now()} start (pod {self.uid}): {' '.join(argv)}\n".encode())
            log.flush()
            c.proc = subprocess.Popen(_with_parent_death(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        c.started_at, c.started_mono = now(), time.monotonic()
        c.terminated, c.waiting = None, None
        c.reset_probes(time.monotonic())

    def _kill(self, c: Container, grace: float) -> None:
        proc = c.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            proc.wait(timeout=max(grace, 0.01))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group
            os.killpg(proc.pid, signal.SIGKILL)

    def _record_exit(self, c: Container) -> None:
        assert c.proc is not None
        code = c.proc.returncode
        c.terminated = {"exitCode": code if code >= 0 else 128 - code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": c.started_at, "finishedAt": now()}
        if code < 0:
            c.terminated["signal"] = -code
        c.ready = False
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            if time.monotonic() - c.started_mono > 10:
                c.backoff = 0.2
            c.restart_at = time.monotonic() + c.backoff
            c.backoff = min(c.backoff * 2, 5.0)
            c.last_state = {"terminated": c.terminated}
        else:
            c.restart_at = float("inf")

    def _restart(self, c: Container) -> None:
        c.restart_count += 1
        if c.terminated is not None:
            c.last_state = {"terminated": c.terminated}
        self._start(c)

    # ---- status

    def _condition(self, kind: str, ok: bool) -> JSON:
        status = "True" if ok else "False"
        old = self._conditions.get(kind)
        if old is None or old["status"] != status:
            old = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": now()}
            self._conditions[kind] = old
        return old

    def _status(self) -> JSON:
        statuses = [c.status() for c in self.containers]
        running = [s for s in statuses if "running" in s["state"]]
        all_ready = bool(self.containers) and all(c.ready for c in self.containers)
        policy = self.pod["spec"].get("restartPolicy", "Always")
        phase = "Pending"
        if running:
            phase = "Running"
        elif self.containers and all(c.terminated is not None and c.restart_at == float("inf")
                                     for c in self.containers):
            phase = "Succeeded" if all(c.terminated and c.terminated["exitCode"] == 0
                                       for c in self.containers) else "Failed"
        elif policy == "Always" and any(c.proc is not None for c in self.containers):
            phase = "Running"
        status: JSON = {
            "phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "startTime": self.start_time,
            "conditions": [self._condition("PodReadyToStartContainers", True), self._condition("Initialized", True),
                           self._condition("Ready", all_ready), self._condition("ContainersReady", all_ready),
                           self._condition("PodScheduled", True)],
            "containerStatuses": statuses,
        }
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.message:
            status["message"] = self.message
        return status

    def _publish(self) -> None:
        status = self._status()
        if status == self._last_status or self.deleted.is_set():
            return
        try:
            self.kubelet.kube.patch(path("Pod", self.namespace, self.name, "status"),
                                    {"metadata": {"uid": self.uid}, "status": status})
            self._last_status = status
        except ApiError as exc:
            if exc.not_found or exc.conflict:
                self.deleted.set()
                self.stopping.set()

    # ---- the loop

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # never kill the kubelet; report and keep the pod visible as failed
            self.kubelet.errors.append(f"pod {self.namespace}/{self.name}: {exc!r}")
            raise
        finally:
            self._teardown()

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "home").mkdir(exist_ok=True)
        ports = [int(p["containerPort"]) for c in self.pod["spec"]["containers"] for p in c.get("ports", [])]
        self.ip = self.kubelet.allocate_ip(ports)
        if not self._setup_volumes():
            return
        self.kubelet.set_host(self)
        logs = self.kubelet.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self.containers = [Container(spec, logs / f"{self.namespace}_{self.name}_{spec['name']}.log")
                           for spec in self.pod["spec"]["containers"]]
        for init in self.pod["spec"].get("initContainers", []):
            c = Container(init, logs / f"{self.namespace}_{self.name}_{init['name']}.log")
            while not self.stopping.is_set():
                self._start(c)
                if c.proc is not None and c.proc.wait() == 0:
                    break
                self.stopping.wait(1.0)
        for c in self.containers:
            if not self.stopping.is_set():
                self._start(c)
        while not self.stopping.is_set():
            t = time.monotonic()
            for c in self.containers:
                self._tend(c, t)
            self._publish()
            self.stopping.wait(0.1)

    def _tend(self, c: Container, t: float) -> None:
        if c.proc is None:
            if t >= c.restart_at:
                self._start(c)
            return
        if c.proc.poll() is not None:
            if c.terminated is None:
                self._record_exit(c)
            if t >= c.restart_at:
                self._restart(c)
            return
        ports = {p["name"]: int(p["containerPort"]) for p in c.spec.get("ports", []) if "name" in p}
        if c.readiness is None:
            c.ready = True
        elif c.readiness.due(t):
            ok = run_probe(c.readiness.spec, self.ip, ports)
            c.readiness.record(ok, time.monotonic())
            if ok and c.readiness.successes >= int(c.readiness.spec.get("successThreshold", 1)):
                c.ready = True
            elif not ok and c.readiness.failures >= int(c.readiness.spec.get("failureThreshold", 3)):
                c.ready = False
        if c.liveness is not None and c.liveness.due(t):
            ok = run_probe(c.liveness.spec, self.ip, ports)
            c.liveness.record(ok, time.monotonic())
            if not ok and c.liveness.failures >= int(c.liveness.spec.get("failureThreshold", 3)):
                grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
                self._kill(c, grace)  # the next pass records the exit and restarts it

    def _teardown(self) -> None:
        grace = float(self.pod["metadata"].get("deletionGracePeriodSeconds")
                      or self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        if self.deleted.is_set() and not self.pod["metadata"].get("deletionTimestamp"):
            grace = 0  # the object vanished (forced delete): like a real kubelet, kill without waiting
        for c in self.containers:
            self._kill(c, grace)
        self.kubelet.clear_host(self)
        if not self.deleted.is_set() and not self.kubelet.shutting_down:
            with contextlib.suppress(ApiError):
                self.kubelet.kube.delete(path("Pod", self.namespace, self.name), grace_seconds=0, uid=self.uid)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)


# ---------------------------------------------------------------- the kubelet


class TestKubelet:
    """Register a Node and run every pod bound (or left unbound) as local processes.

    `namespaces`: only pods there (None = all namespaces).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, kube: Kube, workdir: Path, *, node_name: str = "faultlab-test-node",
                 namespaces: set[str] | None = None) -> None:
        self.kube = kube
        self.workdir = Path(workdir)
        self.node_name = node_name
        self.namespaces = namespaces
        self.hosts_file = self.workdir / "hosts"
        self.workers: dict[str, PodWorker] = {}
        self.errors: list[str] = []
        self.shutting_down = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._hosts: dict[str, tuple[str, list[str]]] = {}
        self._next_ip = 2
        self._block = random.randint(1, 254)
        self._threads: list[threading.Thread] = []

    # ---- lifecycle

    def start(self) -> TestKubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_hosts()
        self._register_node()
        for target, name in ((self._heartbeat, "kubelet-heartbeat"), (self._watch, "kubelet-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop every pod's processes (the pod objects stay; the Node is removed)."""
        self.shutting_down = True
        self._stop.set()
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.pod["metadata"].setdefault("deletionGracePeriodSeconds", 2)
            w.stopping.set()
        for w in workers:
            w.join(timeout=30)
        for thread in self._threads:
            thread.join(timeout=5)
        with contextlib.suppress(ApiError):
            self.kube.delete(path("Node", name=self.node_name))

    def __enter__(self) -> TestKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- queries for tests

    def pod_ip(self, namespace: str, name: str) -> str | None:
        with self._lock:
            for w in self.workers.values():
                if w.namespace == namespace and w.name == name and not w.stopping.is_set():
                    return w.ip or None
        return None

    def logs(self, namespace: str, name: str, container: str | None = None, *, uid: str | None = None) -> str:
        """Output of the pod's containers (every pod of that name so far, or only the one with `uid`)."""
        pattern = f"{namespace}_{name}_{container or '*'}.log"
        text = "".join(p.read_text(errors="replace") for p in sorted((self.workdir / "logs").glob(pattern)))
        if uid is None:
            return text
        runs = re.split(r"(?m)^(?=--- \S+ start \(pod )", text)  # one run per container start
        return "".join(run for run in runs if f" start (pod {uid}): " in run.split("\n", 1)[0])

    def pid(self, namespace: str, name: str, container: str | None = None) -> int | None:
        with self._lock:
            for w in self.workers.values():
                if w.namespace == namespace and w.name == name and not w.stopping.is_set():
                    for c in w.containers:
                        if (container is None or c.name == container) and c.proc and c.proc.poll() is None:
                            return c.proc.pid
        return None

    # ---- addresses

    def allocate_ip(self, ports: list[int] | None = None) -> str:
        """The next loopback IP of this kubelet's block whose `ports` are free (another test run may share
        the machine: each kubelet starts at a random 127.<b>.0.0/16 block and skips addresses in use)."""
        for _ in range(4096):
            with self._lock:
                n = self._next_ip
                self._next_ip += 1
                if self._next_ip % 256 in (0, 255):
                    self._next_ip += 3
            ip = f"127.{self._block}.{(n // 256) % 256}.{n % 256}"
            if all(_port_free(ip, port) for port in ports or []):
                return ip
        raise RuntimeError(f"no free loopback address in 127.{self._block}.0.0/16")

    def set_host(self, worker: PodWorker) -> None:
        spec = worker.pod["spec"]
        names: list[str] = []
        hostname, subdomain = spec.get("hostname", worker.name), spec.get("subdomain")
        if subdomain:
            base = f"{hostname}.{subdomain}"
            names += [f"{base}.{worker.namespace}.svc.cluster.local", f"{base}.{worker.namespace}.svc",
                      f"{base}.{worker.namespace}", base]
        names.append(f"{worker.ip.replace('.', '-')}.{worker.namespace}.pod")
        with self._lock:
            self._hosts[worker.uid] = (worker.ip, names)
            self._write_hosts()

    def clear_host(self, worker: PodWorker) -> None:
        with self._lock:
            self._hosts.pop(worker.uid, None)
            self._write_hosts()

    def _write_hosts(self) -> None:
        lines = [f"{ip} {' '.join(names)}" for ip, names in self._hosts.values()]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("# written by the faultlab test kubelet\n" + "\n".join(lines) + "\n")
        os.replace(tmp, self.hosts_file)

    # ---- node

    def _node_status(self) -> JSON:
        ts = now()
        return {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "faultlab test kubelet is posting ready status",
                            "lastHeartbeatTime": ts, "lastTransitionTime": ts}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node_name}],
            "capacity": {"cpu": "16", "memory": "64Gi", "pods": "250"},
            "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "250"},
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                         "osImage": "faultlab test kubelet", "containerRuntimeVersion": "faultlab://local",
                         "kubeletVersion": "v0.0.0-faultlab", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64"},
        }

    def _register_node(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name,
                             "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64", "faultlab.dev/test-kubelet": "true"}},
                "spec": {}}
        self.kube.ensure(node)
        self.kube.patch(path("Node", name=self.node_name, subresource="status"), {"status": self._node_status()})

    def _heartbeat(self) -> None:
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        while not self._stop.wait(5.0):
            try:
                renew = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": renew}}
                if self.kube.get(lease_path) is None:
                    self.kube.create(body)
                else:
                    self.kube.patch(lease_path, {"spec": body["spec"]})
                self.kube.patch(path("Node", name=self.node_name, subresource="status"),
                                {"status": self._node_status()})
            except Exception as exc:  # the API server may be restarting; try again next beat
                self.errors.append(f"heartbeat: {exc!r}")

    # ---- pods

    def _mine(self, pod: JSON) -> bool:
        if self.namespaces is not None and pod["metadata"].get("namespace") not in self.namespaces:
            return False
        node = pod["spec"].get("nodeName")
        return node in (None, "", self.node_name)

    def _watch(self) -> None:
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    pods, rv = self.kube.list_with_version(path("Pod"))
                    self._resync(pods)
                for event in self.kube.watch(path("Pod"), rv, timeout_s=30):
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        rv = "" if obj.get("code") == 410 else rv
                        break
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if event["type"] == "BOOKMARK":
                        continue
                    self._on_event(event["type"], obj)
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.errors.append(f"watch: {exc!r}")
                rv = ""
                self._stop.wait(0.5)

    def _resync(self, pods: list[JSON]) -> None:
        seen = set()
        for pod in pods:
            seen.add(pod["metadata"]["uid"])
            self._on_event("MODIFIED", pod)
        with self._lock:
            gone = [w for uid, w in self.workers.items() if uid not in seen]
        for w in gone:
            self._on_event("DELETED", w.pod)

    def _on_event(self, kind: str, pod: JSON) -> None:
        if not self._mine(pod):
            return
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.deleted.set()
                worker.stopping.set()
                with self._lock:
                    self.workers.pop(uid, None)
            return
        if worker is not None:
            worker.pod["metadata"] = meta
            if meta.get("deletionTimestamp"):
                worker.stopping.set()
            return
        if meta.get("deletionTimestamp"):  # never started here: just let it go
            with contextlib.suppress(ApiError):
                self.kube.delete(path("Pod", meta["namespace"], meta["name"]), grace_seconds=0, uid=uid)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        if not pod["spec"].get("nodeName"):
            try:
                self.kube.create_at(path("Pod", meta["namespace"], meta["name"], "binding"), {
                    "apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}})
            except ApiError as exc:
                if exc.not_found:
                    return
                if not exc.conflict:
                    raise
            pod["spec"]["nodeName"] = self.node_name
        worker = PodWorker(self, pod)
        with self._lock:
            self.workers[uid] = worker
        worker.start()


def describe(kube: Kube, namespace: str) -> str:
    """Pods of a namespace with phase, IP and readiness — for test failure messages."""
    lines = []
    for pod in kube.list(path("Pod", namespace)):
        st = pod.get("status", {})
        ready = next((c["status"] for c in st.get("conditions", []) if c["type"] == "Ready"), "?")
        restarts = sum(c.get("restartCount", 0) for c in st.get("containerStatuses", []))
        lines.append(f"{pod['metadata']['name']}: {st.get('phase')} ip={st.get('podIP')} ready={ready} "
                     f"restarts={restarts}")
    return json.dumps(lines, indent=1)
