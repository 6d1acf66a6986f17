"""Agent-injected WAL corruption against real supervised `faultlab-node raft` processes.

The fault flips bytes in a member's WAL and holds them. While the member runs it serves
from memory; killed, it restarts on the damaged log and must detect it: Raft storage
refuses to start, naming the file and offset, before anything is served. That stopped
process puts the original bytes back (its agent died with the kill, the record on disk
did not), the supervisor starts it again and it catches up with the cluster.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from faultlab.nodes.agent.client import AgentClient, fault_from_spec
from faultlab.nodes.agent.resources import CORRUPTION_DIR
from faultlab.nodes.raft.client import RaftClient
from faultlab.operator.api import RaftCluster, load_one
from faultlab.operator.runtime.base import Member, TargetRef
from faultlab.operator.runtime.local import LocalRuntime

pytestmark = pytest.mark.timeout(180)

CLUSTER = """
apiVersion: faultlab.dev/v1alpha1
kind: RaftCluster
metadata: {name: corrupt}
spec: {replicas: 3}
"""
TARGET = TargetRef("RaftCluster", "corrupt")
KEYS = 60


async def wait_for(cond: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[LocalRuntime, list[Member]]]:
    rt = LocalRuntime(tmp_path / "state")
    members = await rt.up(load_one(CLUSTER, RaftCluster), timeout_s=60)
    try:
        yield rt, members
    finally:
        await rt.down("corrupt")


async def test_a_restarted_member_refuses_its_corrupted_wal_then_heals_and_catches_up(
        cluster: tuple[LocalRuntime, list[Member]]) -> None:
    rt, members = cluster
    token = await rt.agent_token(TARGET)
    addresses = {m.id: m.address for m in members}
    leader = await rt.wait_for_leader("corrupt")
    victim = next(m for m in members if m.id != leader)
    record = rt.load("corrupt").member(victim.id)
    data_dir, log_file = Path(record.data_dir), Path(record.log_file)

    async with RaftClient(addresses) as kv:
        for i in range(KEYS):
            await kv.put(f"k{i}", f"v{i}")
        commit = (await kv.status()).commit_index
        await wait_for(lambda: _applied(kv, victim.id, commit), 20, f"{victim.id} to apply index {commit}")

        wal = max((data_dir / "wal").glob("*.wal"))
        clean = wal.read_bytes()
        async with AgentClient(victim.agent_address, token) as agent:
            resp = await agent.inject(fault_from_spec("corruption", {"target": "wal", "bytes": 16, "seed": 7},
                                                      id="flip", ttl_seconds=120))
            assert resp.created and str(wal) in resp.detail
            offsets = [int(x) for x in re.search(r"offsets=\[([\d,]+)\]", resp.detail).group(1).split(",")]
            damaged = wal.read_bytes()
            assert len(offsets) == 16 and all(damaged[o] != clean[o] for o in offsets)
            assert [a.fault.id for a in (await agent.list()).faults] == ["flip"]
        assert list((data_dir / CORRUPTION_DIR).glob("*.json")), "the originals are on disk before the flip"

        log_before = len(log_file.read_text())
        await rt.kill(TARGET, victim)

        def refused() -> bool:
            return "refusing to start" in log_file.read_text()[log_before:]

        await wait_for(refused, 30, f"{victim.id} to refuse its corrupted WAL")
        assert await rt.wait_running(TARGET, victim, timeout_s=60), log_file.read_text()[log_before:]

        after_kill = log_file.read_text()[log_before:]
        refusal = next(line for line in after_kill.splitlines() if "refusing to start" in line)
        assert re.search(rf"WAL corruption in {re.escape(str(wal))} at offset \d+", refusal), refusal
        # nothing was served on the damaged log: the refused process never bound its port, and
        # the originals went back before the next start began serving
        i_refused = after_kill.index("refusing to start")
        i_restored = after_kill.index("restored 16 of 16 flipped byte(s)")
        i_serving = after_kill.index("serving on")
        assert i_refused < i_restored < i_serving, after_kill
        assert "exited with code 2" in after_kill
        assert record.supervisor_state()["restarts"] >= 2  # the kill, then the refused start

        restored = wal.read_bytes()
        assert all(restored[o] == clean[o] for o in offsets)
        assert not (data_dir / CORRUPTION_DIR).exists()
        async with AgentClient(victim.agent_address, token) as agent:
            assert list((await agent.list()).faults) == []

        # healthy again: every member serves, the victim caught up and holds every value
        await rt.wait_for_leader("corrupt", timeout_s=30, all_ready=True)
        await kv.put("after", "healed")
        commit = (await kv.status()).commit_index
        await wait_for(lambda: _applied(kv, victim.id, commit), 30, f"{victim.id} to catch up to {commit}")
        for i in range(KEYS):
            assert await kv.get(f"k{i}", serializable=True, member=victim.id) == f"v{i}".encode()
        assert await kv.get("after", serializable=True, member=victim.id) == b"healed"
        assert (await rt.status("corrupt")).ready_replicas == 3


async def test_corruption_recovered_while_the_member_runs_is_undone_in_place(
        cluster: tuple[LocalRuntime, list[Member]]) -> None:
    rt, members = cluster
    token = await rt.agent_token(TARGET)
    victim = members[0]
    data_dir = Path(rt.load("corrupt").member(victim.id).data_dir)
    async with RaftClient({m.id: m.address for m in members}) as kv:
        await kv.put("x", "1")
    wal = max((data_dir / "wal").glob("*.wal"))
    async with AgentClient(victim.agent_address, token) as agent:
        resp = await agent.inject(fault_from_spec("corruption", {"target": "wal", "bytes": 4, "seed": 1},
                                                  id="flip", ttl_seconds=120))
        offsets = [int(x) for x in re.search(r"offsets=\[([\d,]+)\]", resp.detail).group(1).split(",")]
        damaged = wal.read_bytes()
        assert await agent.recover("flip")
        healed = wal.read_bytes()
    assert all(healed[o] != damaged[o] for o in offsets)
    assert not (data_dir / CORRUPTION_DIR).exists()
    # a restart now reads a clean log: no refusal
    pid = rt.node_pid(TARGET, victim.id)
    await rt.kill(TARGET, victim)
    assert await rt.wait_running(TARGET, victim, timeout_s=60)
    assert rt.node_pid(TARGET, victim.id) != pid
    assert rt.load("corrupt").member(victim.id).supervisor_state()["restarts"] == 1


async def _applied(kv: RaftClient, member: str, index: int) -> bool:
    try:
        return (await kv.status(member)).applied_index >= index
    except Exception:
        return False
