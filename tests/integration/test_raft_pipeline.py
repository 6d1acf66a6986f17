"""KV.Pipeline against real members: the same answers and errors as the unary calls, redirects,
many operations in flight on one stream, and no acknowledged write lost when the leader dies."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import grpc
import pytest

from faultlab.nodes.raft.client import InvalidArgument, RaftClient, RaftError
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc
from tests.integration.cluster import LocalRaftCluster

pytestmark = pytest.mark.timeout(120)

MakeCluster = Callable[..., LocalRaftCluster]


async def test_pipelined_operations_answer_like_unary_calls(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    await c.wait_leader()
    async with c.client(pipeline=True) as kv:
        assert not (await kv.put("a", "1")).prev_found
        assert (await kv.put("a", "2")).prev_value == b"1"
        assert await kv.get("a") == b"2"
        assert (await kv.cas("a", "2", "3")).succeeded
        assert not (await kv.cas("a", "2", "4")).succeeded
        assert await kv.delete("a") is True
        assert await kv.get("a") is None
        with pytest.raises(InvalidArgument, match="key: must not be empty"):
            await kv.put("", "v")
        # Many in flight on one client (one stream per member): every answer reaches its caller.
        await asyncio.gather(*(kv.put(f"k{i}", f"v{i}") for i in range(200)))
        values = await asyncio.gather(*(kv.get(f"k{i}") for i in range(200)))
        assert values == [f"v{i}".encode() for i in range(200)]
        assert all(p.supported for p in kv._pipes.values()), "the members serve Pipeline"


async def test_a_follower_answers_a_pipelined_write_with_the_leader(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    leader = await c.wait_leader()
    await c.wait_caught_up()
    follower = next(m for m in c.members if m != leader)
    async with grpc.aio.insecure_channel(c.members[follower].address) as ch:
        async def one() -> pb.PipelineRequest:
            yield pb.PipelineRequest(id=7, put=pb.PutRequest(key=b"k", value=b"v"))
        answers = [a async for a in pb_grpc.KVStub(ch).Pipeline(one(), timeout=10)]
    assert [a.id for a in answers] == [7]
    error = answers[0].error
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert error.leader == f"{leader}={c.members[leader].address}"
    # The client follows that redirect as it follows the unary one.
    async with RaftClient([c.members[follower].address], pipeline=True) as kv:
        await kv.put("via-follower", "ok")
        assert await kv.get("via-follower") == b"ok"


async def test_no_acknowledged_pipelined_write_is_lost_when_the_leader_dies(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    leader = await c.wait_leader()
    acked: dict[str, str] = {}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        async with c.client(pipeline=True, timeout=15.0) as kv:
            for i in range(10_000):
                if stop.is_set():
                    return
                key, value = f"w{w}-{i}", f"{i}"
                try:
                    await kv.put(key, value)
                except RaftError:
                    continue  # outcome unknown: not acknowledged, not counted
                acked[key] = value

    writers = [asyncio.create_task(writer(w)) for w in range(8)]
    await c.wait_for(lambda: asyncio.sleep(0, result=len(acked) >= 100), 20, "writes before the kill")
    c.kill(leader, signal.SIGKILL)
    await c.wait_leader(exclude=(leader,))
    before = len(acked)
    await c.wait_for(lambda: asyncio.sleep(0, result=len(acked) >= before + 100), 30, "writes after the kill")
    stop.set()
    await asyncio.gather(*writers)
    async with c.client(pipeline=True) as kv:
        got = await asyncio.gather(*(kv.get(k) for k in acked))
    lost = [k for k, v in zip(acked, got, strict=True) if v != acked[k].encode()]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
