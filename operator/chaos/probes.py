"""Steady-state probes and abort conditions, and the cluster view they read.

A probe answers "does the system look healthy right now?" with a :class:`ProbeResult`.
Kinds: workload error rate and latency percentile over a sliding window, gRPC health
of members, "a leader exists" (majority of members agree on a leader that says it
leads), HTTP GET and a shell command. The engine evaluates steady-state probes and
abort conditions every few hundred milliseconds.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faultlab.protos.raft.v1 import raft_pb2, raft_pb2_grpc

__all__ = [
    "PROBE_TYPES",
    "ClusterView",
    "MemberStatus",
    "ProbeContext",
    "ProbeResult",
    "ProbeSpec",
    "WindowStats",
    "evaluate",
    "percentile",
]

PROBE_TYPES = ("workloadErrorRate", "workloadLatency", "health", "leaderExists", "http", "command")


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def param(self, *names: str, default: Any = None) -> Any:
        for n in names:
            if n in self.params and self.params[n] is not None:
                return self.params[n]
        return default


@dataclass(frozen=True)
class ProbeResult:
    name: str
    ok: bool
    detail: str
    value: float | None = None


@dataclass(frozen=True)
class WindowStats:
    ops: int
    errors: int
    latencies_ms: list[float]

    @property
    def error_rate(self) -> float:
        return self.errors / self.ops if self.ops else 0.0


class StatsSource(Protocol):
    def window(self, seconds: float, now: float | None = None) -> WindowStats: ...


@dataclass(frozen=True)
class MemberStatus:
    id: str
    role: str  # leader | follower | candidate | learner | unknown
    term: int
    leader_id: str
    commit_index: int = 0


_ROLES = {
    raft_pb2.ROLE_LEADER: "leader",
    raft_pb2.ROLE_FOLLOWER: "follower",
    raft_pb2.ROLE_CANDIDATE: "candidate",
    raft_pb2.ROLE_PRE_CANDIDATE: "candidate",
    raft_pb2.ROLE_LEARNER: "learner",
}


class ClusterView:
    """Cached gRPC channels to each member; Cluster.Status and Health calls with short deadlines."""

    def __init__(self, members: Mapping[str, str], timeout_s: float = 0.5) -> None:
        self.members = dict(members)
        self.timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, member: str) -> grpc.aio.Channel:
        ch = self._channels.get(member)
        if ch is None:
            ch = grpc.aio.insecure_channel(self.members[member], options=[("grpc.enable_retries", 0)])
            self._channels[member] = ch
        return ch

    async def status(self, member: str) -> MemberStatus | None:
        try:
            resp = await raft_pb2_grpc.ClusterStub(self.channel(member)).Status(
                raft_pb2.StatusRequest(), timeout=self.timeout_s
            )
        except (TimeoutError, grpc.aio.AioRpcError):
            return None
        return MemberStatus(resp.id or member, _ROLES.get(resp.role, "unknown"), resp.term, resp.leader_id,
                            resp.commit_index)

    async def statuses(self) -> dict[str, MemberStatus | None]:
        ids = sorted(self.members)
        results = await asyncio.gather(*(self.status(m) for m in ids))
        return dict(zip(ids, results, strict=True))

    async def healthy(self, member: str) -> bool:
        try:
            resp = await health_pb2_grpc.HealthStub(self.channel(member)).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s
            )
        except (TimeoutError, grpc.aio.AioRpcError):
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()


def agreed_leader(statuses: Mapping[str, MemberStatus | None]) -> tuple[str, int] | None:
    """(leader id, term) when a majority of all members name one leader that itself says it leads."""
    n = len(statuses)
    votes: dict[str, int] = {}
    for st in statuses.values():
        if st is not None and st.leader_id:
            votes[st.leader_id] = votes.get(st.leader_id, 0) + 1
    for leader, count in sorted(votes.items(), key=lambda kv: -kv[1]):
        own = statuses.get(leader)
        if count > n // 2 and own is not None and own.role == "leader":
            return leader, own.term
    return None


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


@dataclass
class ProbeContext:
    cluster: ClusterView
    stats: StatsSource | None = None
    targets: Callable[[], set[str]] = field(default=lambda: set())
    statuses: Callable[[], Awaitable[dict[str, MemberStatus | None]]] | None = None


def _window(spec: ProbeSpec) -> float:
    return float(spec.param("windowSeconds", "window", default=2.0))


async def evaluate(spec: ProbeSpec, ctx: ProbeContext) -> ProbeResult:
    """Run one probe; never raises (a probe that cannot run is a breach that says why)."""
    try:
        return await _evaluate(spec, ctx)
    except Exception as exc:  # a broken probe must not stop the engine's rollback
        return ProbeResult(spec.name, False, f"probe failed to run: {exc}")


async def _evaluate(spec: ProbeSpec, ctx: ProbeContext) -> ProbeResult:
    kind = spec.type
    if kind == "workloadErrorRate":
        if ctx.stats is None:
            return ProbeResult(spec.name, False, "errorRate probe needs a workload")
        limit = float(spec.param("max", "maxErrorRate", default=0.05))
        w = ctx.stats.window(_window(spec))
        min_ops = int(spec.param("minOps", default=1))
        if w.ops < min_ops:
            return ProbeResult(spec.name, False, f"only {w.ops} operation(s) in the last {_window(spec):g}s", 1.0)
        ok = w.error_rate <= limit
        return ProbeResult(spec.name, ok, f"error rate {w.error_rate:.1%} over {w.ops} op(s) (max {limit:.1%})",
                           w.error_rate)
    if kind == "workloadLatency":
        if ctx.stats is None:
            return ProbeResult(spec.name, False, "latency probe needs a workload")
        p = float(spec.param("percentile", default=99))
        limit = float(spec.param("maxMs", "max", default=500))
        w = ctx.stats.window(_window(spec))
        value = percentile(w.latencies_ms, p)
        if value is None:
            return ProbeResult(spec.name, False, f"no successful operation in the last {_window(spec):g}s")
        return ProbeResult(spec.name, value <= limit, f"p{p:g} {value:.1f} ms (max {limit:g} ms)", value)
    if kind == "health":
        which = str(spec.param("members", default="all"))
        ids = sorted(ctx.targets()) if which == "targets" else sorted(ctx.cluster.members)
        states = await asyncio.gather(*(ctx.cluster.healthy(m) for m in ids))
        bad = [m for m, ok in zip(ids, states, strict=True) if not ok]
        return ProbeResult(spec.name, not bad, f"not serving: {', '.join(bad)}" if bad else f"{len(ids)} serving")
    if kind == "leaderExists":
        statuses = await (ctx.statuses() if ctx.statuses else ctx.cluster.statuses())
        found = agreed_leader(statuses)
        if found is None:
            return ProbeResult(spec.name, False, "no leader that a majority agrees on")
        return ProbeResult(spec.name, True, f"leader {found[0]} (term {found[1]})")
    if kind == "http":
        url = str(spec.param("url"))
        expect = int(spec.param("expectStatus", "status", default=200))
        timeout = float(spec.param("timeoutSeconds", default=2.0))
        code = await asyncio.to_thread(_http_status, url, timeout)
        return ProbeResult(spec.name, code == expect, f"GET {url} -> {code or 'no answer'} (want {expect})")
    if kind == "command":
        argv = [str(a) for a in spec.param("command", default=[])]
        cmd = " ".join(argv)
        timeout = float(spec.param("timeoutSeconds", default=5.0))
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return ProbeResult(spec.name, False, f"`{cmd}` timed out after {timeout:g}s")
        return ProbeResult(spec.name, rc == 0, f"`{cmd}` exited {rc}")
    return ProbeResult(spec.name, False, f"unknown probe type {kind!r}; use one of {', '.join(PROBE_TYPES)}")


def _http_status(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


async def evaluate_all(specs: list[ProbeSpec], ctx: ProbeContext) -> list[ProbeResult]:
    return list(await asyncio.gather(*(evaluate(s, ctx) for s in specs)))
