"""Raft KV workload: clients that record a History while an experiment runs.

Two kinds of clients share one :class:`History`:

* ``N`` leader-following clients do puts, CAS and linearizable gets on a small key
  space. Every written value is unique per key (``<client>-<seq>``), which is what the
  checkers rely on. Their results (one logical operation = up to a few attempts
  following leader redirects) feed availability, error rate and latency.
* one pinned reader per member does linearizable gets on *that* member only, so a
  member that answers reads it should not (a partitioned old leader serving stale
  local reads) is caught by the linearizability check. Pinned reads are evidence for
  the checkers, not part of the availability numbers.

Outcomes: a rejection (not the leader, refused connection) is ``FAIL``: it did not
happen. A time-out or lost connection is ``UNKNOWN``: it may have happened.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from faultlab.nodes.raft.pipeline import LEADER_METADATA
from faultlab.operator.chaos.history import History, OpKind, Outcome
from faultlab.operator.chaos.probes import ClusterView, WindowStats, agreed_leader
from faultlab.protos.raft.v1 import raft_pb2, raft_pb2_grpc

__all__ = ["Sample", "Workload", "WorkloadConfig"]

_HOSTPORT = re.compile(r"([A-Za-z0-9_.\-\[\]:]+:\d+)")


@dataclass
class WorkloadConfig:
    clients: int = 4
    keys: int = 12
    rate_per_client: float = 20.0  # logical ops per second per client
    read_fraction: float = 0.4
    cas_fraction: float = 0.1
    op_timeout_s: float = 1.0
    pinned_readers: bool = True
    pinned_rate: float = 10.0
    value_bytes: int = 0  # pad written values to this size (the unique prefix is kept)
    seed: int = 0
    key_prefix: str = "faultlab"


@dataclass(frozen=True, slots=True)
class Sample:
    """One logical client operation as the availability numbers see it (Unix times)."""

    call: float
    ret: float
    ok: bool
    kind: str
    client: str

    @property
    def latency_ms(self) -> float:
        return (self.ret - self.call) * 1000.0


@dataclass
class _Attempt:
    outcome: Outcome
    output: str | None = None
    succeeded: bool | None = None
    hint: str | None = None
    error: str = ""


@dataclass
class Workload:
    """Start with :meth:`start`, stop with :meth:`stop`; then :meth:`final_reads`."""

    members: Mapping[str, str]
    config: WorkloadConfig = field(default_factory=WorkloadConfig)
    history: History = field(default_factory=lambda: History(clock=time.time))
    samples: list[Sample] = field(default_factory=list)
    pinned_samples: list[Sample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.view = ClusterView(self.members, timeout_s=0.3)
        self.keys = [f"{self.config.key_prefix}/k{i:02d}" for i in range(self.config.keys)]
        self._leader: str | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    # -------------------------------------------------------------- plumbing

    def _stub(self, address: str) -> raft_pb2_grpc.KVStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(address, options=[("grpc.enable_retries", 0)])
            self._channels[address] = ch
        return raft_pb2_grpc.KVStub(ch)

    def _resolve_hint(self, value: str) -> str | None:
        for mid, addr in self.members.items():
            if value == mid or value.startswith(mid + "=") or value.startswith(mid + ",") or value.endswith(addr):
                return addr
        m = _HOSTPORT.search(value)
        return m.group(1) if m else None

    async def _track_leader(self) -> None:
        while not self._stop.is_set():
            statuses = await self.view.statuses()
            found = agreed_leader(statuses)
            if found is not None:
                self._leader = self.members.get(found[0], self._leader)
            else:
                leaders = [s for s in statuses.values() if s is not None and s.role == "leader"]
                if leaders:
                    best = max(leaders, key=lambda s: s.term)
                    self._leader = self.members.get(best.id, self._leader)
            try:
                await asyncio.wait_for(self._stop.wait(), 0.2)
            except TimeoutError:
                pass

    async def _attempt(self, address: str, kind: OpKind, key: str, value: str | None,
                       expected: str | None) -> _Attempt:
        stub = self._stub(address)
        timeout = self.config.op_timeout_s
        k = key.encode()
        try:
            if kind is OpKind.PUT:
                assert value is not None
                await stub.Put(raft_pb2.PutRequest(key=k, value=value.encode()), timeout=timeout)
                return _Attempt(Outcome.OK)
            if kind is OpKind.GET:
                g = await stub.Get(raft_pb2.GetRequest(key=k), timeout=timeout)
                return _Attempt(Outcome.OK, output=g.value.decode() if g.found else None)
            if kind is OpKind.CAS:
                assert value is not None
                c = await stub.CompareAndSwap(
                    raft_pb2.CompareAndSwapRequest(key=k, expect_found=expected is not None,
                                                   expected=(expected or "").encode(), value=value.encode()),
                    timeout=timeout,
                )
                return _Attempt(Outcome.OK, succeeded=bool(c.succeeded))
            raise ValueError(f"workload does not issue {kind}")
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            name = code.name if code is not None else "UNKNOWN"
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                hint = None
                for mk, mv in exc.trailing_metadata() or ():
                    if mk == LEADER_METADATA:
                        hint = self._resolve_hint(mv if isinstance(mv, str) else mv.decode())
                return _Attempt(Outcome.FAIL, hint=hint, error=name)
            details = (exc.details() or "").lower()
            refused = code == grpc.StatusCode.UNAVAILABLE and (
                "failed to connect" in details or "connection refused" in details or "connect failed" in details
            )
            if refused or code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                return _Attempt(Outcome.FAIL, error=name)
            return _Attempt(Outcome.UNKNOWN, error=name)

    async def _logical(self, client: str, kind: OpKind, key: str, value: str | None,
                       expected: str | None) -> _Attempt:
        """One operation following redirects; every attempt goes into the history."""
        call = time.time()
        deadline = call + self.config.op_timeout_s * 2
        result = _Attempt(Outcome.FAIL, error="NO_LEADER")
        address = self._leader
        for _ in range(3):
            if address is None:
                break
            handle = self.history.begin(client, kind, key, value, expected)
            result = await self._attempt(address, kind, key, value, expected)
            self.history.end(handle, result.outcome, output=result.output, succeeded=result.succeeded)
            if result.outcome is not Outcome.FAIL or time.time() > deadline:
                break
            if result.hint and result.hint != address:
                address = result.hint
                continue
            break
        if result.outcome is not Outcome.OK:
            self.errors[result.error] = self.errors.get(result.error, 0) + 1
        if client != "final":
            self.samples.append(Sample(call, time.time(), result.outcome is Outcome.OK, kind.value, client))
        return result

    async def _client(self, index: int) -> None:
        name = f"c{index}"
        rng = random.Random(f"{self.config.seed}/{name}")
        seq = 0
        seen: dict[str, str | None] = {}
        period = 1.0 / self.config.rate_per_client if self.config.rate_per_client > 0 else 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            key = rng.choice(self.keys)
            r = rng.random()
            if self._leader is None:
                await asyncio.sleep(0.05)
                continue
            if r < self.config.read_fraction:
                res = await self._logical(name, OpKind.GET, key, None, None)
                if res.outcome is Outcome.OK:
                    seen[key] = res.output
            else:
                seq += 1
                value = f"{name}-{seq}"
                if len(value) < self.config.value_bytes:
                    value = value + "." + "x" * (self.config.value_bytes - len(value) - 1)
                if r < self.config.read_fraction + self.config.cas_fraction and key in seen:
                    res = await self._logical(name, OpKind.CAS, key, value, seen[key])
                    if res.outcome is Outcome.OK and res.succeeded:
                        seen[key] = value
                else:
                    res = await self._logical(name, OpKind.PUT, key, value, None)
                    if res.outcome is Outcome.OK:
                        seen[key] = value
            if res.outcome is Outcome.UNKNOWN:
                seen.pop(key, None)
            await self._pause(period - (time.monotonic() - started))

    async def _pinned_reader(self, member: str, address: str) -> None:
        name = f"r-{member}"
        rng = random.Random(f"{self.config.seed}/{name}")
        period = 1.0 / max(self.config.pinned_rate, 0.1)
        while not self._stop.is_set():
            started = time.monotonic()
            key = rng.choice(self.keys)
            call = time.time()
            handle = self.history.begin(name, OpKind.GET, key)
            res = await self._attempt(address, OpKind.GET, key, None, None)
            self.history.end(handle, res.outcome, output=res.output)
            self.pinned_samples.append(Sample(call, time.time(), res.outcome is Outcome.OK, "get", name))
            await self._pause(period - (time.monotonic() - started))

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    # -------------------------------------------------------------- API

    async def start(self, wait_leader_s: float = 10.0) -> None:
        self.started_at = time.time()
        self._tasks.append(asyncio.create_task(self._track_leader(), name="workload-leader"))
        deadline = time.monotonic() + wait_leader_s
        while self._leader is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for i in range(self.config.clients):
            self._tasks.append(asyncio.create_task(self._client(i), name=f"workload-c{i}"))
        if self.config.pinned_readers:
            for member, address in sorted(self.members.items()):
                self._tasks.append(asyncio.create_task(self._pinned_reader(member, address), name=f"reader-{member}"))

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.stopped_at = time.time()

    async def final_reads(self, timeout_s: float = 15.0) -> dict[str, str | None]:
        """A linearizable read of every key through the leader (recorded as client ``final``)."""
        reads: dict[str, str | None] = {}
        deadline = time.monotonic() + timeout_s
        for key in self.keys:
            while time.monotonic() < deadline:
                if self._leader is None:
                    found = agreed_leader(await self.view.statuses())
                    self._leader = self.members.get(found[0]) if found else None
                    if self._leader is None:
                        await asyncio.sleep(0.1)
                        continue
                res = await self._logical("final", OpKind.GET, key, None, None)
                if res.outcome is Outcome.OK:
                    reads[key] = res.output
                    break
                self._leader = None
        return reads

    async def close(self) -> None:
        await self.stop()
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()
        await self.view.close()

    def window(self, seconds: float, now: float | None = None) -> WindowStats:
        now = time.time() if now is None else now
        lo = now - seconds
        ops = errors = 0
        lat: list[float] = []
        for s in reversed(self.samples):
            if s.call < lo - 10:
                break
            if lo <= s.ret <= now:
                ops += 1
                if s.ok:
                    lat.append(s.latency_ms)
                else:
                    errors += 1
        return WindowStats(ops, errors, lat)
