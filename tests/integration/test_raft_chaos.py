"""Concurrent clients record a history while members are killed, paused and restarted.

The verdict is checked, not assumed: the history must be linearizable and no
acknowledged write may be lost. The workload's seed is printed (FAULTLAB_SEED
replays the same choices).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from faultlab.nodes.raft.client import InvalidArgument, RaftClient, RaftError
from faultlab.operator.chaos.checks import linearizability as checks
from faultlab.operator.chaos.history import History, OpKind
from tests.integration.cluster import LocalRaftCluster

pytestmark = pytest.mark.timeout(150)

MakeCluster = Callable[..., LocalRaftCluster]
KEYS = ["a", "b", "c", "d"]


class Workload:
    """Closed-loop clients doing put/get/cas/delete on a few keys, recording every call."""

    def __init__(self, cluster: LocalRaftCluster, clients: int, seed: int) -> None:
        self.cluster = cluster
        self.history = History()
        self.rng = random.Random(seed)
        self.stop = asyncio.Event()
        self.done = 0
        self.acked_writes = 0
        self.n = clients
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._client(f"c{i}", random.Random(self.rng.random())))
                      for i in range(self.n)]

    async def _client(self, name: str, rng: random.Random) -> None:
        seen: dict[str, str | None] = {}
        seq = 0
        async with RaftClient(self.cluster.addresses(), timeout=3.0, attempt_timeout=1.0) as kv:
            while not self.stop.is_set():
                key = rng.choice(KEYS)
                seq += 1
                value = f"{name}-{seq}"
                roll = rng.random()
                if roll < 0.4:
                    await self._op(name, OpKind.PUT, key, value, None, kv.put(key, value))
                elif roll < 0.75:
                    with self.history.invoke(name, OpKind.GET, key) as call:
                        try:
                            got = await kv.get(key)
                        except InvalidArgument:
                            call.fail()
                            continue
                        except RaftError:
                            continue
                        out = got.decode() if got is not None else None
                        seen[key] = out
                        call.ok(output=out)
                elif roll < 0.93:
                    expected = seen.get(key)
                    await self._op(name, OpKind.CAS, key, value, expected,
                                   kv.cas(key, expected, value))
                else:
                    await self._op(name, OpKind.DELETE, key, None, None, kv.delete(key))
                self.done += 1

    async def _op(self, name: str, kind: object, key: str, value: str | None, expected: str | None,
                  run: Awaitable[Any]) -> None:
        with self.history.invoke(name, kind, key, value, expected) as call:
            try:
                result = await run
            except InvalidArgument:
                call.fail()
                return
            except RaftError:
                return  # outcome unknown: the invoke context records it so
            if kind == OpKind.CAS:
                call.ok(succeeded=result.succeeded)  # type: ignore[attr-defined]
                if result.succeeded:  # type: ignore[attr-defined]
                    self.acked_writes += 1
            else:
                call.ok()
                self.acked_writes += 1

    async def progress(self, ops: int, timeout: float = 30.0) -> None:
        """Waits until ``ops`` more operations completed (the cluster makes progress)."""
        target = self.done + ops

        async def reached() -> bool:
            return self.done >= target
        await self.cluster.wait_for(reached, timeout, f"{ops} more client operations")

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def verdict(self) -> None:
        final: dict[str, str | None] = {}
        async with RaftClient(self.cluster.addresses(), timeout=15.0) as kv:
            for key in KEYS:
                with self.history.invoke("final", OpKind.GET, key) as call:
                    got = await kv.get(key)
                    final[key] = got.decode() if got is not None else None
                    call.ok(output=final[key])
        ops = self.history.operations()
        lin = checks.check_linearizable(ops, timeout_s=60)
        print(f"history: {len(ops)} operations, {self.acked_writes} acknowledged writes; {lin.summary()}")
        assert lin.verdict == "linearizable", lin.summary()
        lost = checks.check_no_lost_writes(ops, final)
        assert lost.ok, lost.summary()


def _seed() -> int:
    seed = int(os.environ.get("FAULTLAB_SEED", random.randrange(1 << 30)))
    print(f"workload seed: {seed} (FAULTLAB_SEED={seed} replays it)")
    return seed


async def test_three_nodes_kill_pause_restart_stays_linearizable(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    await c.wait_leader()
    w = Workload(c, clients=6, seed=_seed())
    w.start()
    try:
        await w.progress(100)

        leader = await c.wait_leader()
        c.kill(leader, signal.SIGKILL)
        await c.wait_leader(exclude=(leader,))
        await w.progress(100)
        c.start_member(leader)

        current = await c.wait_leader()
        follower = next(m for m in c.members if m != current)
        c.pause(follower)
        await w.progress(100)
        c.resume(follower)

        restarted = next(m for m in c.members if m != follower)
        c.kill(restarted, signal.SIGTERM)
        c.start_member(restarted)
        await w.progress(100)
        await c.wait_caught_up(timeout=30)
    finally:
        await w.finish()
    await w.verdict()


async def test_five_nodes_lose_two_including_the_leader(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(5)
    leader = await c.wait_leader()
    w = Workload(c, clients=5, seed=_seed())
    w.start()
    try:
        await w.progress(80)
        other = next(m for m in c.members if m != leader)
        c.kill(leader)
        c.kill(other)
        await c.wait_leader(exclude=(leader, other))
        await w.progress(100)
        c.start_member(leader)
        c.start_member(other)
        await w.progress(50)
        await c.wait_caught_up(timeout=30)
    finally:
        await w.finish()
    await w.verdict()
