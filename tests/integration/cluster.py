"""LocalRaftCluster: real `faultlab-node raft` processes on loopback, for integration and chaos tests.

Each member runs as its own process, on its own loopback address (127.0.0.x, a
free port) with its own data directory. The exact command line of a member::

    <python> -m faultlab.nodes.common.main raft \\
        --id n1 --listen 127.0.0.2:PORT \\
        --peers n1=127.0.0.2:PORT1,n2=127.0.0.3:PORT2,n3=127.0.0.4:PORT3 \\
        --data-dir DIR/n1 \\
        --tick-ms 10 --election-ticks 30 --heartbeat-ticks 3 \\
        [--snapshot-threshold N] [--join] [--unsafe-local-reads] \\
        [--agent-token TOKEN] [--metrics-listen HOST:PORT]

(the console script ``faultlab-node raft ...`` is the same). ``--peers`` is the
initial cluster and includes the member itself; a member added later starts with
``--join`` and no ``--peers`` of its own and is added by ``add_learner``. Every flag
can also be given as ``FAULTLAB_<FLAG>`` in the environment.

Waiting is always on a condition with a deadline (``wait_for``), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from faultlab.nodes.raft.client import RaftClient
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc

FAST_TIMING = ("--tick-ms", "10", "--election-ticks", "30", "--heartbeat-ticks", "3")

_next_host = [2]


def free_address() -> str:
    """A loopback address of its own (127.0.0.x) with a free port."""
    host = f"127.0.0.{_next_host[0]}"
    _next_host[0] = 2 + (_next_host[0] - 1) % 250
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


@dataclass
class Member:
    id: str
    address: str
    data_dir: Path
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalRaftCluster:
    """Starts, kills, pauses and restarts member processes; waits on cluster conditions."""

    def __init__(self, base_dir: Path, size: int = 3, *, extra_args: tuple[str, ...] = FAST_TIMING,
                 env: dict[str, str] | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.members: dict[str, Member] = {}
        for i in range(1, size + 1):
            self._new_member(f"n{i}")
        self.initial = dict(self.addresses())

    def _new_member(self, member_id: str) -> Member:
        data = self.base_dir / member_id
        m = Member(member_id, free_address(), data, self.base_dir / f"{member_id}.log")
        self.members[member_id] = m
        return m

    def addresses(self) -> dict[str, str]:
        return {m.id: m.address for m in self.members.values()}

    def command(self, member_id: str, *, join: bool = False) -> list[str]:
        m = self.members[member_id]
        cmd = [sys.executable, "-m", "faultlab.nodes.common.main", "raft", "--id", m.id, "--listen", m.address,
               "--data-dir", str(m.data_dir), *self.extra_args, *m.args]
        if join:
            cmd.append("--join")
        else:
            cmd += ["--peers", ",".join(f"{k}={v}" for k, v in self.initial.items())]
        return cmd

    # ------------------------------------------------------------------ processes

    def start(self) -> LocalRaftCluster:
        for mid in list(self.members):
            self.start_member(mid)
        return self

    def start_member(self, member_id: str, *, join: bool = False) -> Member:
        m = self.members[member_id]
        assert not m.running, f"{member_id} already runs"
        m.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(m.log_path, "ab")  # noqa: SIM115 - the child owns it
        log.write(f"--- start {' '.join(self.command(member_id, join=join))}\n".encode())
        log.flush()
        m.proc = subprocess.Popen(self.command(member_id, join=join), stdout=log, stderr=subprocess.STDOUT,
                                  env=self.env)
        log.close()
        m.paused = False
        return m

    def add_member(self, member_id: str, *args: str) -> Member:
        m = self._new_member(member_id)
        m.args = list(args)
        return self.start_member(member_id, join=True)

    def kill(self, member_id: str, sig: int = signal.SIGKILL) -> None:
        m = self.members[member_id]
        if m.proc is not None and m.proc.poll() is None:
            if m.paused:
                m.proc.send_signal(signal.SIGCONT)
            m.proc.send_signal(sig)
            m.proc.wait(10)
        m.paused = False

    def pause(self, member_id: str) -> None:
        m = self.members[member_id]
        assert m.proc is not None
        m.proc.send_signal(signal.SIGSTOP)
        m.paused = True

    def resume(self, member_id: str) -> None:
        m = self.members[member_id]
        assert m.proc is not None
        m.proc.send_signal(signal.SIGCONT)
        m.paused = False

    def restart(self, member_id: str) -> Member:
        self.kill(member_id)
        return self.start_member(member_id)

    def close(self) -> None:
        for mid in list(self.members):
            with contextlib.suppress(Exception):
                self.kill(mid, signal.SIGKILL)

    def log_tail(self, member_id: str, lines: int = 30) -> str:
        path = self.members[member_id].log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(f"===== {mid}\n{self.log_tail(mid)}" for mid in self.members)

    # ------------------------------------------------------------------ conditions

    def client(self, **kwargs: object) -> RaftClient:
        return RaftClient(self.addresses(), **kwargs)  # type: ignore[arg-type]

    async def status(self, member_id: str, timeout: float = 1.0) -> pb.StatusResponse | None:
        m = self.members[member_id]
        if not m.running or m.paused:
            return None
        async with grpc.aio.insecure_channel(m.address) as ch:
            try:
                return await pb_grpc.ClusterStub(ch).Status(pb.StatusRequest(), timeout=timeout)
            except grpc.aio.AioRpcError:
                return None

    async def statuses(self) -> dict[str, pb.StatusResponse]:
        ids = list(self.members)
        got = await asyncio.gather(*(self.status(i) for i in ids))
        return {i: s for i, s in zip(ids, got, strict=True) if s is not None}

    async def wait_for(self, predicate: Callable[[], Awaitable[object]], timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while True:
            result = await predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")
            await asyncio.sleep(0.05)

    async def wait_leader(self, timeout: float = 15.0, exclude: tuple[str, ...] = ()) -> str:
        async def leader() -> str | None:
            sts = await self.statuses()
            leaders = [i for i, s in sts.items() if s.role == pb.ROLE_LEADER and i not in exclude]
            if len(leaders) == 1:
                terms = {s.term for s in sts.values()}
                if max(terms) == sts[leaders[0]].term:
                    return leaders[0]
            return None
        return str(await self.wait_for(leader, timeout, "a single leader"))

    async def wait_caught_up(self, member_ids: list[str] | None = None, timeout: float = 20.0) -> None:
        """Every listed member has applied everything the leader has committed."""
        ids = member_ids or [m.id for m in self.members.values() if m.running and not m.paused]

        async def caught_up() -> bool:
            sts = await self.statuses()
            leaders = [s for s in sts.values() if s.role == pb.ROLE_LEADER]
            if len(leaders) != 1 or any(i not in sts for i in ids):
                return False
            commit = leaders[0].commit_index
            return all(sts[i].applied_index >= commit for i in ids)
        await self.wait_for(caught_up, timeout, f"{ids} to catch up with the leader")

    async def wait_exit(self, member_id: str, timeout: float = 15.0) -> int:
        m = self.members[member_id]
        assert m.proc is not None

        async def exited() -> bool:
            return m.proc is not None and m.proc.poll() is not None
        await self.wait_for(exited, timeout, f"{member_id} to exit")
        return int(m.proc.returncode)
