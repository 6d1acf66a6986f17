"""A real Kubernetes control plane on loopback for the k8s test tier.

Starts etcd, kube-apiserver and kube-controller-manager built from the Go
module proxy by ``tools/k8s/build.sh`` (no Docker, no kind), with certificates
made by the ``openssl`` command: an admin identity (``system:masters``) and a
non-admin one (``faultlab-tester``, no bindings). The controller manager makes
garbage collection and namespace deletion work as in a real cluster.

In tests use :func:`start` (or the pytest fixtures in ``tests.support.k8s_pytest``).
From a shell::

    python -m tests.support.k8s_control_plane up --dir .faultlab/k8s
    python -m tests.support.k8s_control_plane down --dir .faultlab/k8s
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "k8s" / "build.sh"
ADMIN_USER = "faultlab-admin"
TEST_USER = "faultlab-tester"
SERVICE_CIDR = "10.0.0.0/24"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")

T = TypeVar("T")

try:  # looked up here, not in the forked child
    _PRCTL: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, used or stopped; the message says why."""


class BuildError(ControlPlaneError):
    """tools/k8s/build.sh failed or could not run (no Go, no network, compile error)."""


def _log(message: str) -> None:
    print(f"[k8s-control-plane] {message}", file=sys.stderr, flush=True)


def start_timeout() -> float:
    return float(os.environ.get("FAULTLAB_K8S_START_TIMEOUT", "180"))


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` seconds pass.

    ``check`` runs before every poll and may raise to give up early (a process died).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if check is not None:
            check()
        try:
            result = condition()
        except Exception as exc:  # a poll that fails is a "not yet"
            last_error = exc
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# --- build --------------------------------------------------------------------------------------


def cached_bin_dir() -> Path:
    """Where build.sh puts the binaries for the kubernetes version pinned in tools/k8s/go.mod."""
    version = ""
    for line in (REPO_ROOT / "tools" / "k8s" / "go.mod").read_text().splitlines():
        words = line.split()
        if "k8s.io/kubernetes" in words and words[-1].startswith("v1."):
            version = words[-1]
            break
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(os.environ.get("FAULTLAB_K8S_CACHE") or cache_home / "faultlab" / "k8s")
    return root / version / "bin"


def ensure_binaries(timeout: float | None = None) -> Path:
    """Run tools/k8s/build.sh (a no-op when cached) and return the directory of the binaries."""
    override = os.environ.get("FAULTLAB_K8S_BIN")
    if override:
        bin_dir = Path(override).resolve()
        missing = [name for name in (*COMPONENTS, "kubectl") if not (bin_dir / name).is_file()]
        if missing:
            raise BuildError(f"FAULTLAB_K8S_BIN={bin_dir} lacks {', '.join(missing)}")
        return bin_dir
    if shutil.which("go") is None:
        cached = cached_bin_dir()
        if all((cached / name).is_file() for name in (*COMPONENTS, "kubectl")):
            _log(f"`go` is not on PATH; using the binaries already built in {cached}")
            return cached
        raise BuildError("`go` is not on PATH: install Go >= 1.25 to build the control plane (tools/k8s/build.sh)")
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=None,  # progress lines go straight to the terminal / captured stderr
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{BUILD_SCRIPT} did not finish within {timeout}s") from exc
    if proc.returncode != 0:
        raise BuildError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}; its error is printed above")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise BuildError(f"{BUILD_SCRIPT} printed no bin directory")
    return Path(lines[-1]).resolve()


def server_version(bin_dir: Path) -> str:
    out = subprocess.run(
        [str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[-1]  # "Kubernetes v1.35.4"


# --- certificates -------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise ControlPlaneError("the `openssl` command is needed to make test certificates: apt-get install openssl")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _ec_key(pki: Path, name: str) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=pki)


def _signed_cert(pki: Path, name: str, subject: str, extensions: Sequence[str]) -> None:
    _ec_key(pki, name)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    (pki / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "365", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki,
    )  # fmt: skip


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert, client certs and the service-account key pair, in ``pki``."""
    pki.mkdir(parents=True, exist_ok=True)
    _ec_key(pki, "ca")
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=faultlab-test-ca", "-days", "365", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    sans = ",".join(
        ["IP:127.0.0.1", "IP:10.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
         "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
    )  # fmt: skip
    _signed_cert(
        pki, "apiserver", "/CN=kube-apiserver",
        ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
         "extendedKeyUsage=serverAuth", f"subjectAltName={sans}"],
    )  # fmt: skip
    client = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature",
        "extendedKeyUsage=clientAuth",
    ]
    _signed_cert(pki, "admin", f"/O=system:masters/CN={ADMIN_USER}", client)
    _signed_cert(pki, "controller-manager", "/O=system:masters/CN=system:kube-controller-manager", client)
    _signed_cert(pki, "user", f"/CN={TEST_USER}", client)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    """A self-contained kubeconfig (certificates embedded; JSON is valid YAML)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "faultlab", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}}],
        "contexts": [{"name": f"{user}@faultlab", "context": {"cluster": "faultlab", "user": user}}],
        "current-context": f"{user}@faultlab",
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # never signal a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _pid_runs(pid: int, exe: Path) -> bool:
    """True when ``pid`` is alive and runs ``exe`` (guards against a reused pid)."""
    if not _pid_alive(pid):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(argv0).name == exe.name


def _terminate(pid: int, exe: Path, timeout: float = 15.0) -> None:
    if not _pid_runs(pid, exe):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    _log(f"{exe.name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_for(lambda: not _pid_alive(pid), timeout=10, what=f"{exe.name} (pid {pid}) to exit after SIGKILL")


@dataclass
class ControlPlane:
    """A running (or reused) cluster: where its kubeconfigs and binaries are, and how to stop it."""

    dir: Path
    server: str
    admin_kubeconfig: Path
    user_kubeconfig: Path
    bin_dir: Path
    version: str = ""
    startup_seconds: float = 0.0
    pids: dict[str, int] = field(default_factory=dict)
    owned: bool = True  # False for a reused cluster: stop() leaves it alone
    detached: bool = False  # True for `up`: the processes outlive the Python process that started them
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.admin_kubeconfig

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def kubectl(
        self,
        *args: str,
        user: bool = False,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl as admin (or as the non-admin identity with ``user=True``)."""
        config = self.user_kubeconfig if user else self.admin_kubeconfig
        cmd = [
            str(self.kubectl_path),
            f"--kubeconfig={config}",
            f"--cache-dir={self.dir / 'kube-cache'}",
            *args,
        ]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            reason = proc.stderr.strip() or proc.stdout.strip()
            raise ControlPlaneError(f"kubectl {' '.join(args)} exited {proc.returncode}: {reason}")
        return proc

    def export_line(self) -> str:
        return f"export KUBECONFIG={self.admin_kubeconfig.resolve()}"

    def check_alive(self) -> None:
        for name, pid in self.pids.items():
            proc = self._procs.get(name)
            dead = proc.poll() is not None if proc is not None else not _pid_alive(pid)
            if dead:
                log = self.logs / f"{name}.log"
                raise ControlPlaneError(f"{name} (pid {pid}) exited; last lines of {log}:\n{_tail(log)}")

    def stop(self) -> None:
        if not self.owned:
            return
        for name in reversed(COMPONENTS):
            pid = self.pids.get(name)
            if pid is None:
                continue
            _terminate(pid, self.bin_dir / name)
            proc = self._procs.pop(name, None)
            if proc is not None:
                proc.wait(timeout=10)
            (self.dir / "run" / f"{name}.pid").unlink(missing_ok=True)
        self.pids.clear()
        (self.dir / "state.json").unlink(missing_ok=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def save_state(self) -> None:
        state = {
            "server": self.server,
            "admin_kubeconfig": str(self.admin_kubeconfig),
            "user_kubeconfig": str(self.user_kubeconfig),
            "bin_dir": str(self.bin_dir),
            "version": self.version,
            "pids": self.pids,
        }
        (self.dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load_state(cls, directory: Path) -> ControlPlane | None:
        path = directory / "state.json"
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        return cls(
            dir=directory,
            server=state["server"],
            admin_kubeconfig=Path(state["admin_kubeconfig"]),
            user_kubeconfig=Path(state["user_kubeconfig"]),
            bin_dir=Path(state["bin_dir"]),
            version=state.get("version", ""),
            pids={k: int(v) for k, v in state["pids"].items()},
        )


def _https_get(url: str, pki: Path, timeout: float = 5.0) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _http_ok(url: str, timeout: float = 2.0, ctx: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
        return bool(resp.status == 200)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so a killed pytest leaks no servers."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(cp: ControlPlane, name: str, args: Sequence[str]) -> None:
    exe = cp.bin_dir / name
    log = cp.logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(exe), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not hit by the terminal's ^C; stop() ends it
            preexec_fn=None if cp.detached else _die_with_parent,
            cwd=cp.dir,
        )
    cp._procs[name] = proc
    cp.pids[name] = proc.pid
    (cp.dir / "run" / f"{name}.pid").write_text(f"{proc.pid}\n")


def _launch(cp: ControlPlane, deadline: float) -> None:
    pki = cp.dir / "pki"
    etcd_port, peer_port, api_port, kcm_port = (free_port() for _ in range(4))
    cp.server = f"https://127.0.0.1:{api_port}"
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    data = cp.dir / "etcd-data"
    shutil.rmtree(data, ignore_errors=True)

    def remaining() -> float:
        return max(1.0, deadline - time.monotonic())

    _spawn(cp, "etcd", [
        "--name=faultlab", f"--data-dir={data}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=faultlab={peer_url}", "--initial-cluster-state=new",
        "--unsafe-no-fsync", "--log-level=warn",
    ])  # fmt: skip
    wait_for(
        lambda: _http_ok(f"{etcd_url}/health"), timeout=remaining(), what=f"etcd health at {etcd_url}",
        check=cp.check_alive,
    )  # fmt: skip

    _spawn(cp, "kube-apiserver", [
        f"--etcd-servers={etcd_url}",
        f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={cp.server}/",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--disable-admission-plugins=ServiceAccount",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
        "--v=1",
    ])  # fmt: skip
    wait_for(
        lambda: _https_get(f"{cp.server}/readyz", pki)[0] == 200, timeout=remaining(),
        what=f"kube-apiserver /readyz at {cp.server}", check=cp.check_alive, interval=0.2,
    )  # fmt: skip

    kcm_config = cp.dir / "controller-manager.kubeconfig"
    write_kubeconfig(
        kcm_config, cp.server, pki / "ca.crt", pki / "controller-manager.crt", pki / "controller-manager.key",
        "system:kube-controller-manager",
    )  # fmt: skip
    _spawn(cp, "kube-controller-manager", [
        f"--kubeconfig={kcm_config}",
        f"--authentication-kubeconfig={kcm_config}", f"--authorization-kubeconfig={kcm_config}",
        "--controllers=*", "--leader-elect=false",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", f"--cert-dir={cp.dir / 'kcm-certs'}",
        "--v=1",
    ])  # fmt: skip
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # the controller manager's self-signed serving cert
    wait_for(
        lambda: _http_ok(f"https://127.0.0.1:{kcm_port}/healthz", ctx=insecure), timeout=remaining(),
        what="kube-controller-manager /healthz", check=cp.check_alive, interval=0.2,
    )  # fmt: skip
    wait_for(
        lambda: _https_get(f"{cp.server}/api/v1/namespaces/default/serviceaccounts/default", pki)[0] == 200,
        timeout=remaining(), what="the controller manager to create the default ServiceAccount",
        check=cp.check_alive, interval=0.2,
    )  # fmt: skip


def start(
    directory: Path | None = None,
    *,
    bin_dir: Path | None = None,
    timeout: float | None = None,
    attempts: int = 3,
    detached: bool = False,
) -> ControlPlane:
    """Build (if needed) and start a control plane whose files live in ``directory`` (a temp dir if None).

    Returns once kube-apiserver is ready and the controller manager is running its
    controllers. Raises :class:`BuildError` or :class:`ControlPlaneError` with the reason.
    """
    bin_dir = bin_dir or ensure_binaries()
    directory = Path(directory or tempfile.mkdtemp(prefix="faultlab-k8s-")).resolve()
    timeout = timeout or start_timeout()
    for sub in ("pki", "logs", "run"):
        (directory / sub).mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    make_pki(directory / "pki")
    pki = directory / "pki"
    for attempt in range(1, attempts + 1):
        cp = ControlPlane(
            dir=directory, server="", admin_kubeconfig=directory / "admin.kubeconfig",
            user_kubeconfig=directory / "user.kubeconfig", bin_dir=bin_dir, version=server_version(bin_dir),
            detached=detached,
        )  # fmt: skip
        for log in cp.logs.glob("*.log"):
            log.unlink()
        try:
            _launch(cp, deadline=time.monotonic() + timeout)
        except BaseException as exc:
            logs = "".join(_tail(cp.logs / f"{name}.log") for name in cp.pids)
            cp.stop()
            if attempt < attempts and "address already in use" in logs:
                _log(f"a port was taken between picking and binding it; retrying ({attempt}/{attempts})")
                continue
            if isinstance(exc, ControlPlaneError):
                raise ControlPlaneError(f"{exc}\n(logs kept in {cp.logs})") from None
            raise
        break
    write_kubeconfig(cp.admin_kubeconfig, cp.server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key", ADMIN_USER)
    write_kubeconfig(cp.user_kubeconfig, cp.server, pki / "ca.crt", pki / "user.crt", pki / "user.key", TEST_USER)
    cp.startup_seconds = time.monotonic() - t0
    cp.save_state()
    _log(f"kubernetes {cp.version} ready at {cp.server} in {cp.startup_seconds:.1f}s (files in {directory})")
    return cp


def reuse(kubeconfig: Path, workdir: Path | None = None) -> ControlPlane:
    """Wrap an existing cluster (FAULTLAB_K8S_EXISTING): nothing is started or stopped.

    The non-admin identity is a token of ServiceAccount ``default/faultlab-tester`` (no bindings).
    """
    kubeconfig = kubeconfig.expanduser().resolve()
    if not kubeconfig.is_file():
        raise ControlPlaneError(f"FAULTLAB_K8S_EXISTING={kubeconfig} is not a file")
    directory = Path(workdir or tempfile.mkdtemp(prefix="faultlab-k8s-existing-")).resolve()
    bin_dir = _existing_kubectl_dir()
    cp = ControlPlane(
        dir=directory, server="", admin_kubeconfig=kubeconfig, user_kubeconfig=directory / "user.kubeconfig",
        bin_dir=bin_dir, owned=False,
    )  # fmt: skip
    view = json.loads(cp.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout)
    cp.server = view["clusters"][0]["cluster"]["server"]
    made = cp.kubectl("create", "serviceaccount", TEST_USER, "-n", "default", check=False)
    if made.returncode != 0 and "AlreadyExists" not in made.stderr:
        raise ControlPlaneError(f"cannot create ServiceAccount default/{TEST_USER}: {made.stderr.strip()}")
    token = cp.kubectl("create", "token", TEST_USER, "-n", "default", "--duration=24h").stdout.strip()
    view["users"][0]["user"] = {"token": token}
    cp.user_kubeconfig.write_text(json.dumps(view, indent=2) + "\n")
    cp.user_kubeconfig.chmod(0o600)
    info = json.loads(cp.kubectl("version", "-o", "json").stdout)
    cp.version = info.get("serverVersion", {}).get("gitVersion", "")
    return cp


def _existing_kubectl_dir() -> Path:
    override = os.environ.get("FAULTLAB_K8S_BIN")
    if override:
        return Path(override).resolve()
    if (cached_bin_dir() / "kubectl").is_file():
        return cached_bin_dir()
    found = shutil.which("kubectl")
    if found is not None:
        return Path(found).resolve().parent
    return ensure_binaries()


# --- CLI ----------------------------------------------------------------------------------------


def _running(directory: Path) -> ControlPlane | None:
    cp = ControlPlane.load_state(directory)
    if cp is None:
        return None
    if all(_pid_runs(cp.pids.get(name, -1), cp.bin_dir / name) for name in COMPONENTS):
        return cp
    return None


def _down(directory: Path) -> int:
    cp = ControlPlane.load_state(directory)
    stopped = 0
    run = directory / "run"
    bin_dir = cp.bin_dir if cp else None
    for name in reversed(COMPONENTS):
        pid_file = run / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text().strip())
        exe = (bin_dir / name) if bin_dir else Path(name)
        if _pid_runs(pid, exe):
            _terminate(pid, exe)
            stopped += 1
        pid_file.unlink()
    (directory / "state.json").unlink(missing_ok=True)
    shutil.rmtree(directory / "etcd-data", ignore_errors=True)
    _log(f"stopped {stopped} process(es) from {directory}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.k8s_control_plane",
        description="Run etcd, kube-apiserver and kube-controller-manager on loopback.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start in the background and print `export KUBECONFIG=...`"),
        ("down", "stop what `up` started"),
        ("status", "say whether it runs"),
        ("build", "only build the binaries; print their directory"),
    ):
        cmd = sub.add_parser(name, help=text)
        if name != "build":
            cmd.add_argument("--dir", type=Path, default=Path(".faultlab/k8s"), help="state directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_binaries())
            return 0
        directory = args.dir.resolve()
        if args.command == "down":
            return _down(directory)
        running = _running(directory)
        if args.command == "status":
            print(f"running at {running.server}" if running else "not running")
            return 0 if running else 1
        if running is not None:
            _log(f"already running at {running.server}")
            print(running.export_line())
            return 0
        _down(directory)  # clear anything left half-running
        cp = start(directory, detached=True)
        cp._procs.clear()  # detach: the processes outlive this command
        print(cp.export_line())
        return 0
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
