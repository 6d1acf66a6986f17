"""The local runtime: each member of a cluster is a node process on its own loopback address.

A member serves its data services on one port of that address and, with the agent enabled,
its FaultAgent on another (`--agent-listen`), as pods do on Kubernetes.

Layout under the state directory (default `.faultlab/`):

    <cluster>/cluster.json        members, addresses (data and agent), supervisor pids, spec (written atomically)
    <cluster>/agent-token         the FaultAgent token (0600); nodes read it through
                                  --agent-token-file, so no command line carries it
    <cluster>/<member>/           the member's data directory
    <cluster>/<member>.log        its log (node output and supervisor notes)
    <cluster>/<member>.state.json its supervisor's record: the node's current pid, restarts

Every node runs under a supervisor (`faultlab.operator.runtime.supervisor`) in a session
of its own, so clusters outlive the command that started them and a killed node comes
back. `kill`/`pause`/`resume` signal the node, never the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faultlab.operator.api.raftcluster import RaftCluster, RaftClusterStatus, RaftMemberStatus, quorum
from faultlab.operator.runtime.base import Member, RuntimeError_, TargetRef
from faultlab.operator.runtime.supervisor import read_state
from faultlab.protos.raft.v1 import raft_pb2, raft_pb2_grpc

DEFAULT_STATE_DIR = Path(".faultlab")
STATE_FILE = "cluster.json"
TOKEN_FILE = "agent-token"
NODE_MODULE = "faultlab.nodes.common.main"
SUPERVISOR_MODULE = "faultlab.operator.runtime.supervisor"
RPC_TIMEOUT_S = 1.0
POLL_S = 0.05
LOG_TAIL_LINES = 25

ROLE_NAMES = {
    raft_pb2.ROLE_LEADER: "Leader", raft_pb2.ROLE_FOLLOWER: "Follower", raft_pb2.ROLE_CANDIDATE: "Candidate",
    raft_pb2.ROLE_PRE_CANDIDATE: "PreCandidate", raft_pb2.ROLE_LEARNER: "Learner",
}
# spec field -> node flag; passed only when the node's parser knows the flag.
NODE_FLAGS = {
    "tick_ms": "--tick-ms", "election_ticks": "--election-ticks", "heartbeat_ticks": "--heartbeat-ticks",
    "snapshot_threshold": "--snapshot-threshold", "max_value_bytes": "--max-value-bytes",
}

T = TypeVar("T")


# ---------------------------------------------------------------- process helpers

def pid_alive(pid: int | None) -> bool:
    """True if `pid` runs (a zombie counts as gone; our own zombie children are reaped)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in {"Z", "X"}


def _proc_state(pid: int) -> str:
    """One-letter state from /proc (R, S, T = stopped, Z = zombie), or '' when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0] if ")" in stat else ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cmdline_has(pid: int, marker: str, without: str = "") -> bool:
    """Guards against pid reuse: the process's command line has `marker` (and not `without`).

    Where there is no /proc, the pid is trusted.
    """
    if not Path("/proc").is_dir():
        return True
    cmd = _cmdline(pid)
    return marker in cmd and not (without and without in cmd)


def _signal(pid: int | None, sig: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _free_port(host: str, taken: set[int]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise RuntimeError_(f"no free TCP port on {host}")


def _loopback_host(index: int) -> str:
    """127.0.0.<index+2> where the system lets us bind it, else 127.0.0.1."""
    host = f"127.0.0.{index + 2}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return "127.0.0.1"
            raise
    return host


def _known_node_flags(kind: str) -> set[str]:
    """Option strings the node command accepts for `kind`."""
    try:
        from faultlab.nodes.common.main import build_parser

        parser = build_parser()
    except ImportError as exc:
        raise RuntimeError_(f"the {kind} node cannot start here: {exc}") from None
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        choices = getattr(action, "choices", None) or {}
        if kind in choices:
            return set(choices[kind]._option_string_actions)
    return set()


# ---------------------------------------------------------------- state

@dataclass
class MemberRecord:
    """A member as recorded in cluster.json."""

    id: str
    address: str  # data services (Raft, health): peers and clients
    data_dir: str
    log_file: str
    state_file: str
    supervisor_pid: int | None = None
    agent_address: str = ""  # the FaultAgent's own listener; empty: no agent, or one on `address`

    def is_node(self, pid: int | None) -> bool:
        """`pid` is this member's node process (not its supervisor, not a reused pid)."""
        return bool(pid) and _cmdline_has(pid or 0, self.data_dir + " ", without=SUPERVISOR_MODULE)

    def is_supervisor(self, pid: int | None) -> bool:
        return bool(pid) and _cmdline_has(pid or 0, self.state_file + " ")

    def supervisor_state(self) -> dict[str, Any]:
        return read_state(Path(self.state_file)) or {}

    def node_pid(self) -> int | None:
        pid = self.supervisor_state().get("pid")
        return int(pid) if isinstance(pid, int) else None


@dataclass
class ClusterState:
    """cluster.json: what `up` started."""

    name: str
    kind: str
    spec: dict[str, Any]
    members: list[MemberRecord]
    created_at: float = field(default_factory=time.time)
    ignored_settings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({
            "name": self.name, "kind": self.kind, "createdAt": self.created_at, "spec": self.spec,
            "ignoredSettings": self.ignored_settings,
            "members": [{"id": m.id, "address": m.address, "agentAddress": m.agent_address, "dataDir": m.data_dir,
                         "logFile": m.log_file, "stateFile": m.state_file, "supervisorPid": m.supervisor_pid}
                        for m in self.members],
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        raw = json.loads(text)
        members = [MemberRecord(id=m["id"], address=m["address"], data_dir=m["dataDir"], log_file=m["logFile"],
                                state_file=m["stateFile"], supervisor_pid=m.get("supervisorPid"),
                                agent_address=m.get("agentAddress", ""))
                   for m in raw["members"]]
        return cls(name=raw["name"], kind=raw.get("kind", "RaftCluster"), spec=raw.get("spec", {}),
                   members=members, created_at=raw.get("createdAt", 0.0),
                   ignored_settings=raw.get("ignoredSettings", []))

    def member(self, member_id: str) -> MemberRecord:
        for m in self.members:
            if m.id == member_id:
                return m
        raise RuntimeError_(f"cluster {self.name} has no member {member_id!r} "
                            f"(members: {', '.join(m.id for m in self.members)})")


@dataclass
class MemberView:
    """One member as `status` sees it: process, Raft state and health."""

    id: str
    address: str
    pid: int | None
    process: str  # running | paused | down
    agent_address: str = ""  # where its FaultAgent listens on a port of its own
    restarts: int = 0
    role: str = "Unknown"
    term: int = 0
    leader_id: str = ""
    commit_index: int = 0
    applied_index: int = 0
    health: str = "UNKNOWN"  # SERVING | NOT_SERVING | UNREACHABLE | ...
    error: str = ""

    @property
    def ready(self) -> bool:
        return self.process == "running" and self.health == "SERVING" and not self.error


# ---------------------------------------------------------------- gRPC

async def _rpc(address: str, call: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
    async with grpc.aio.insecure_channel(address) as channel:
        return await call(channel)


async def query_status(address: str, timeout_s: float = RPC_TIMEOUT_S) -> raft_pb2.StatusResponse:
    """`faultlab.raft.v1.Cluster/Status` of the member at `address`."""
    async def call(channel: grpc.aio.Channel) -> raft_pb2.StatusResponse:
        stub = raft_pb2_grpc.ClusterStub(channel)
        return await stub.Status(raft_pb2.StatusRequest(), timeout=timeout_s)  # type: ignore[no-any-return]
    return await _rpc(address, call)


async def query_health(address: str, timeout_s: float = RPC_TIMEOUT_S) -> str:
    """The member's overall gRPC health: SERVING, NOT_SERVING, ... or UNREACHABLE."""
    async def call(channel: grpc.aio.Channel) -> str:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
    try:
        return await _rpc(address, call)
    except grpc.aio.AioRpcError:
        return "UNREACHABLE"


# ---------------------------------------------------------------- runtime

class LocalRuntime:
    """Runs RaftClusters as supervised local processes; implements `Runtime`."""

    name = "local"

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.state_dir = Path(state_dir).absolute()

    # -- state

    def cluster_dir(self, name: str) -> Path:
        return self.state_dir / name

    def clusters(self) -> list[str]:
        """Names of clusters with a state file under the state directory."""
        if not self.state_dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.state_dir.glob(f"*/{STATE_FILE}"))

    def load(self, name: str) -> ClusterState:
        path = self.cluster_dir(name) / STATE_FILE
        try:
            return ClusterState.from_json(path.read_text())
        except FileNotFoundError:
            known = ", ".join(self.clusters()) or "none"
            raise RuntimeError_(
                f"no local cluster {name!r} under {self.state_dir} (clusters there: {known}); "
                f"start one with `faultlab up -f cluster.yaml`") from None
        except (ValueError, KeyError) as exc:
            raise RuntimeError_(f"{path} is damaged ({exc}); remove {path.parent} and run `faultlab up` again") \
                from None

    def _save(self, state: ClusterState) -> None:
        _write_atomic(self.cluster_dir(state.name) / STATE_FILE, state.to_json())

    def is_running(self, name: str) -> bool:
        """True if any supervisor of the cluster still runs."""
        try:
            state = self.load(name)
        except RuntimeError_:
            return False
        return any(pid_alive(m.supervisor_pid) and m.is_supervisor(m.supervisor_pid) for m in state.members)

    def _target_state(self, target: TargetRef) -> ClusterState:
        if target.kind != "RaftCluster":
            raise RuntimeError_(f"the local runtime runs RaftClusters only (target is {target.kind})")
        return self.load(target.name)

    # -- up / down

    async def up(self, cluster: RaftCluster, timeout_s: float = 30.0) -> list[Member]:
        """Starts the cluster (or returns it if it already runs with this spec) and waits for a leader."""
        name = cluster.name
        spec = cluster.spec.model_dump(mode="json", by_alias=True)
        if self.is_running(name):
            state = self.load(name)
            if state.spec != spec:
                raise RuntimeError_(f"cluster {name} is already up with a different spec; "
                                    f"`faultlab down {name}` first, then `faultlab up` again")
            await self.wait_for_leader(name, timeout_s, all_ready=True)
            return await self.members(TargetRef("RaftCluster", name))
        cdir = self.cluster_dir(name)
        self._wipe(cdir)
        cdir.mkdir(parents=True, exist_ok=True)
        os.chmod(cdir, 0o700)

        token_args: list[str] = []
        if cluster.spec.agent.enabled:
            _write_atomic(cdir / TOKEN_FILE, secrets.token_hex(32) + "\n", mode=0o600)
            token_args = ["--agent-token-file", str(cdir / TOKEN_FILE)]

        taken = self._ports_in_use()
        members: list[MemberRecord] = []
        for i, member_id in enumerate(cluster.member_ids()):
            host = _loopback_host(i)
            port = _free_port(host, taken)
            taken.add(port)
            agent_address = ""
            if cluster.spec.agent.enabled:  # the agent listens apart from the data services, as in a pod
                agent_port = _free_port(host, taken)
                taken.add(agent_port)
                agent_address = f"{host}:{agent_port}"
            members.append(MemberRecord(
                id=member_id, address=f"{host}:{port}", data_dir=str(cdir / member_id),
                log_file=str(cdir / f"{member_id}.log"), state_file=str(cdir / f"{member_id}.state.json"),
                agent_address=agent_address))
        known = _known_node_flags("raft")
        values = {
            "tick_ms": cluster.spec.timings.tick_ms, "election_ticks": cluster.spec.timings.election_ticks,
            "heartbeat_ticks": cluster.spec.timings.heartbeat_ticks,
            "snapshot_threshold": cluster.spec.snapshot_threshold, "max_value_bytes": cluster.spec.max_value_bytes,
        }
        extra: list[str] = []
        ignored: list[str] = []
        for key, flag in NODE_FLAGS.items():
            if flag in known:
                extra += [flag, str(values[key])]
            else:
                ignored.append(key)
        state = ClusterState(name=name, kind="RaftCluster", spec=spec, members=members, ignored_settings=ignored)
        self._save(state)

        peers = ",".join(f"{m.id}={m.address}" for m in members)
        try:
            for m in members:
                Path(m.data_dir).mkdir(parents=True, exist_ok=True)
                Path(m.log_file).write_text("")
                with contextlib.suppress(FileNotFoundError):
                    Path(m.state_file).unlink()
                agent_args = ["--agent-listen", m.agent_address] if m.agent_address else []
                node_cmd = [sys.executable, "-m", NODE_MODULE, "raft", "--id", m.id, "--listen", m.address,
                            "--peers", peers, "--data-dir", m.data_dir, *token_args, *agent_args, *extra]
                m.supervisor_pid = self._spawn_supervisor(m, node_cmd)
            self._save(state)
            await self.wait_for_leader(name, timeout_s, fail_on_restart=True, all_ready=True)
        except BaseException:
            await self._stop(state, timeout_s=5.0)
            raise
        return await self.members(TargetRef("RaftCluster", name))

    def _spawn_supervisor(self, m: MemberRecord, node_cmd: list[str]) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLAB_")}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", SUPERVISOR_MODULE, "--state", m.state_file, "--log", m.log_file,
               "--", *node_cmd]
        with open(m.log_file, "a") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=self.state_dir, start_new_session=True, close_fds=True)
        return proc.pid

    def _ports_in_use(self) -> set[int]:
        ports: set[int] = set()
        for other in self.clusters():
            with contextlib.suppress(RuntimeError_):
                for m in self.load(other).members:
                    ports.update(int(a.rpartition(":")[2]) for a in (m.address, m.agent_address) if a)
        return ports

    def _wipe(self, cdir: Path) -> None:
        """Removes a stopped cluster's data and state (logs are truncated when members start)."""
        if not cdir.is_dir():
            return
        for child in cdir.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            elif not child.name.endswith(".log"):
                child.unlink(missing_ok=True)

    async def down(self, name: str, timeout_s: float = 10.0) -> None:
        """Stops every supervisor and node of the cluster and removes its data (logs are kept)."""
        state = self.load(name)
        await self._stop(state, timeout_s)
        self._wipe(self.cluster_dir(name))

    async def _stop(self, state: ClusterState, timeout_s: float) -> None:
        node_pids = {m.id: m.node_pid() for m in state.members}
        for m in state.members:
            pid = node_pids[m.id]
            if m.is_node(pid):
                _signal(pid, signal.SIGCONT)  # a paused node cannot exit
            sup = m.supervisor_pid
            if m.is_supervisor(sup):
                _signal(sup, signal.SIGTERM)
            elif m.is_node(pid):
                _signal(pid, signal.SIGTERM)  # orphaned node: no supervisor to stop it
        everything = [p for m in state.members for p in (m.supervisor_pid, node_pids[m.id]) if p]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(pid_alive(p) for p in everything):
            await asyncio.sleep(POLL_S)
        for m in state.members:
            if pid_alive(m.supervisor_pid) and m.is_supervisor(m.supervisor_pid):
                _signal(m.supervisor_pid, signal.SIGKILL)
            # the node we read, or one the supervisor restarted after we read its pid
            for pid in {node_pids[m.id], m.node_pid()}:
                if pid and pid_alive(pid) and m.is_node(pid):
                    _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(pid_alive(p) for p in everything):
            await asyncio.sleep(POLL_S)

    # -- observation

    async def inspect(self, name: str) -> list[MemberView]:
        """Every member's process state, Raft status and health, queried concurrently."""
        state = self.load(name)
        return list(await asyncio.gather(*(self._inspect_member(m) for m in state.members)))

    async def _inspect_member(self, m: MemberRecord) -> MemberView:
        sup = m.supervisor_state()
        pid = sup.get("pid") if isinstance(sup.get("pid"), int) else None
        alive = pid_alive(pid) and m.is_node(pid)
        process = "down"
        if alive:
            process = "paused" if _proc_state(pid or 0) in {"T", "t"} else "running"
        view = MemberView(id=m.id, address=m.address, pid=pid if alive else None, process=process,
                          restarts=int(sup.get("restarts") or 0), agent_address=m.agent_address)
        if process != "running":
            view.role, view.health = ("Down" if process == "down" else "Unknown"), "UNREACHABLE"
            return view
        view.health = await query_health(m.address)
        try:
            st = await query_status(m.address)
        except grpc.aio.AioRpcError as exc:
            view.error = f"{exc.code().name}: {exc.details()}"
            return view
        view.role = ROLE_NAMES.get(st.role, "Unknown")
        view.term, view.leader_id = st.term, st.leader_id
        view.commit_index, view.applied_index = st.commit_index, st.applied_index
        return view

    @staticmethod
    def leader_of(views: list[MemberView]) -> str | None:
        """The leader a quorum of members agrees on (the highest-term self-declared leader), if any."""
        leaders = sorted((v for v in views if v.role == "Leader"), key=lambda v: v.term, reverse=True)
        if not leaders:
            return None
        lead = leaders[0]
        agree = sum(1 for v in views if v.leader_id == lead.id and v.term == lead.term)
        return lead.id if agree >= quorum(len(views)) else None

    async def status(self, name: str) -> RaftClusterStatus:
        """The cluster's RaftClusterStatus, from every member's Cluster/Status and health."""
        views = await self.inspect(name)
        leader = self.leader_of(views)
        ready = sum(1 for v in views if v.ready)
        lead_view = next((v for v in views if v.id == leader), None)
        if not any(v.process != "down" for v in views):
            phase = "Stopped"
        elif leader is None:
            phase = "Bootstrapping" if ready else "Failed"
        else:
            phase = "Running" if ready == len(views) else "Degraded"
        return RaftClusterStatus(
            phase=phase, replicas=len(views), ready_replicas=ready, leader=leader,
            term=max((v.term for v in views), default=0),
            commit_index=lead_view.commit_index if lead_view else 0,
            members=[RaftMemberStatus(
                id=v.id, address=v.address, role=v.role if v.role in ROLE_NAMES.values() or v.role == "Down"
                else "Unknown", ready=v.ready, term=v.term, commit_index=v.commit_index,
                applied_index=v.applied_index, pod=str(v.pid or "")) for v in views],
        )

    async def wait_for_leader(self, name: str, timeout_s: float = 30.0, fail_on_restart: bool = False,
                              all_ready: bool = False) -> str:
        """Polls until a quorum agrees on a leader (and, with `all_ready`, every member serves until the
        deadline); the error shows the failing member's log tail."""
        state = self.load(name)
        deadline = time.monotonic() + timeout_s
        views: list[MemberView] = []
        leader: str | None = None
        while True:
            for m in state.members:
                sup = m.supervisor_state()
                supervised = m.supervisor_pid and pid_alive(m.supervisor_pid)
                if not supervised:
                    raise RuntimeError_(self._failure(m, "its supervisor is not running"))
                if fail_on_restart and int(sup.get("restarts") or 0) > 0:
                    raise RuntimeError_(self._failure(m, "its node process exited"))
            views = await self.inspect(name)
            leader = self.leader_of(views)
            if leader and (not all_ready or all(v.ready for v in views)):
                return leader
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_S * 2)
        if leader:
            return leader  # a quorum serves; the stragglers show in `status`
        lines = [f"cluster {name}: no leader after {timeout_s:g}s"]
        for v in views:
            lines.append(f"  {v.id} {v.address}: process {v.process}, role {v.role}, term {v.term}, "
                         f"leader {v.leader_id or '-'}, health {v.health}{', ' + v.error if v.error else ''}")
        worst = next((v for v in views if not v.ready), views[0] if views else None)
        if worst is not None:
            m = state.member(worst.id)
            lines.append(f"last lines of {m.log_file}:\n{_tail(Path(m.log_file))}")
        raise RuntimeError_("\n".join(lines))

    @staticmethod
    def _failure(m: MemberRecord, what: str) -> str:
        return (f"member {m.id} ({m.address}) failed to start: {what}. "
                f"Last lines of {m.log_file}:\n{_tail(Path(m.log_file))}")

    # -- Runtime protocol

    async def members(self, target: TargetRef) -> list[Member]:
        state = self._target_state(target)
        out: list[Member] = []
        for m in state.members:
            pid = m.node_pid()
            out.append(Member(id=m.id, address=m.address,
                              process=str(pid) if pid and pid_alive(pid) else "",
                              labels={"faultlab.dev/cluster": state.name, "faultlab.dev/member": m.id},
                              agent_address=m.agent_address))
        return out

    async def agent_token(self, target: TargetRef) -> str:
        self._target_state(target)
        path = self.cluster_dir(target.name) / TOKEN_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise RuntimeError_(f"cluster {target.name} runs without a fault agent (spec.agent.enabled: false); "
                                f"enable it and `faultlab up` again to inject faults") from None

    def _node_pid(self, target: TargetRef, member: Member) -> tuple[MemberRecord, int]:
        m = self._target_state(target).member(member.id)
        pid = m.node_pid()
        if not pid or not pid_alive(pid) or not m.is_node(pid):
            raise RuntimeError_(f"member {member.id} of {target.name} has no running process "
                                f"(restarting?); see {m.log_file}")
        return m, pid

    async def kill(self, target: TargetRef, member: Member) -> None:
        _, pid = self._node_pid(target, member)
        _signal(pid, signal.SIGKILL)

    async def pause(self, target: TargetRef, member: Member) -> None:
        """SIGSTOPs the node and returns once it is stopped."""
        _, pid = self._node_pid(target, member)
        _signal(pid, signal.SIGSTOP)
        await self._wait_proc_state(pid, stopped=True)

    async def resume(self, target: TargetRef, member: Member) -> None:
        """SIGCONTs the node (if it runs) and returns once it is no longer stopped."""
        m = self._target_state(target).member(member.id)
        pid = m.node_pid()
        if pid and pid_alive(pid) and m.is_node(pid):
            _signal(pid, signal.SIGCONT)
            await self._wait_proc_state(pid, stopped=False)

    @staticmethod
    async def _wait_proc_state(pid: int, stopped: bool, timeout_s: float = 5.0) -> None:
        """Signals are delivered asynchronously: wait until /proc shows the effect (where there is /proc)."""
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and (_proc_state(pid) in {"T", "t"}) != stopped and Path("/proc").is_dir():
            if time.monotonic() >= deadline:
                raise RuntimeError_(f"process {pid} did not {'stop' if stopped else 'continue'} "
                                    f"within {timeout_s:g}s")
            await asyncio.sleep(0.01)

    def node_pid(self, target: TargetRef, member_id: str) -> int | None:
        """The member's current node pid, if it runs."""
        m = self._target_state(target).member(member_id)
        pid = m.node_pid()
        return pid if pid and pid_alive(pid) else None

    async def wait_running(self, target: TargetRef, member: Member, timeout_s: float) -> bool:
        m = self._target_state(target).member(member.id)
        deadline = time.monotonic() + timeout_s
        while True:
            pid = m.node_pid()
            if (pid and pid_alive(pid) and _proc_state(pid) not in {"T", "t"}
                    and await query_health(m.address) == "SERVING"):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
