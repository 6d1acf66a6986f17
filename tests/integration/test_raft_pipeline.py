"""KV.Pipeline against real members: the same answers and errors as the unary calls, redirects,
many operations in flight on one stream, and no acknowledged write lost when the leader dies."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from faultlab.nodes.agent.client import AgentClient, fault_from_spec
from faultlab.nodes.raft.client import InvalidArgument, RaftClient, RaftError
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc
from tests.integration.cluster import LocalRaftCluster

pytestmark = pytest.mark.timeout(120)

MakeCluster = Callable[..., LocalRaftCluster]
AGENT_TOKEN = "pipeline-test-token"


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


async def test_operations_sent_together_are_answered_together(raft_cluster: MakeCluster) -> None:
    """One message of 100 writes commits as one batch, so its answers share a few messages."""
    c = raft_cluster(3)
    leader = await c.wait_leader()
    await c.wait_caught_up()
    batch = pb.PipelineRequests(requests=[pb.PipelineRequest(id=i, put=pb.PutRequest(key=b"b%d" % i, value=b"v"))
                                          for i in range(1, 101)])

    async def once() -> AsyncIterator[pb.PipelineRequests]:
        yield batch
    async with grpc.aio.insecure_channel(c.members[leader].address) as ch:
        messages = [m async for m in pb_grpc.KVStub(ch).Pipeline(once(), timeout=10)]
    answers = [a for m in messages for a in m.responses]
    assert sorted(a.id for a in answers) == list(range(1, 101))
    assert all(a.WhichOneof("result") == "put" for a in answers), answers[:3]
    assert len(messages) <= 10, f"100 answers took {len(messages)} stream messages: they were not batched"


async def test_a_follower_answers_a_pipelined_write_with_the_leader(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    leader = await c.wait_leader()
    await c.wait_caught_up()
    follower = next(m for m in c.members if m != leader)
    async with grpc.aio.insecure_channel(c.members[follower].address) as ch:
        async def one() -> AsyncIterator[pb.PipelineRequests]:
            yield pb.PipelineRequests(requests=[pb.PipelineRequest(id=7, put=pb.PutRequest(key=b"k", value=b"v"))])
        answers = [a async for batch in pb_grpc.KVStub(ch).Pipeline(one(), timeout=10) for a in batch.responses]
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

    # Writers 0-3 have a client each; 4-11 share one, so their writes travel in batches.
    shared = c.client(pipeline=True, timeout=15.0)

    async def writer(w: int) -> None:
        kv = c.client(pipeline=True, timeout=15.0) if w < 4 else shared
        try:
            for i in range(10_000):
                if stop.is_set():
                    return
                key, value = f"w{w}-{i}", f"{i}"
                try:
                    await kv.put(key, value)
                except RaftError:
                    continue  # outcome unknown: not acknowledged, not counted
                acked[key] = value
        finally:
            if kv is not shared:
                await kv.close()

    writers = [asyncio.create_task(writer(w)) for w in range(12)]
    await c.wait_for(lambda: asyncio.sleep(0, result=len(acked) >= 100), 20, "writes before the kill")
    c.kill(leader, signal.SIGKILL)
    await c.wait_leader(exclude=(leader,))
    before = len(acked)
    await c.wait_for(lambda: asyncio.sleep(0, result=len(acked) >= before + 100), 30, "writes after the kill")
    stop.set()
    await asyncio.gather(*writers)
    await shared.close()
    async with c.client(pipeline=True) as kv:
        got = await asyncio.gather(*(kv.get(k) for k in acked))
    lost = [k for k, v in zip(acked, got, strict=True) if v != acked[k].encode()]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"


class _Stream:
    """A raw KV.Pipeline stream the test writes to one request per message."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.outbox: asyncio.Queue[pb.PipelineRequests | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[pb.PipelineRequests]:
            while (r := await self.outbox.get()) is not None:
                yield r
        self.call = pb_grpc.KVStub(channel).Pipeline(requests(), timeout=30)
        self.ids = 0
        self.received: list[pb.PipelineResponse] = []

    def put(self, key: str) -> None:
        self.ids += 1
        request = pb.PipelineRequest(id=self.ids, put=pb.PutRequest(key=key.encode(), value=b"v"))
        self.outbox.put_nowait(pb.PipelineRequests(requests=[request]))

    async def answer(self) -> pb.PipelineResponse:
        """The next answer, whichever message of the stream carries it."""
        while not self.received:
            self.received.extend((await asyncio.wait_for(self.call.read(), 10)).responses)
        return self.received.pop(0)


async def test_faults_reach_a_pipeline_opened_before_them(raft_cluster: MakeCluster) -> None:
    """A stream that opened while the network was healthy gets each fault on its next message:
    a partition ends it (UNAVAILABLE), a delay holds each message back by the latency, not by
    the latency times the messages queued before it."""
    c = raft_cluster(3, env={"FAULTLAB_AGENT_TOKEN": AGENT_TOKEN})
    leader = await c.wait_leader()
    address = c.members[leader].address
    match = {"direction": "inbound", "includeClients": True, "methods": ["/faultlab.raft.v1.KV/"]}
    async with grpc.aio.insecure_channel(address) as ch, AgentClient(address, AGENT_TOKEN) as agent:
        s = _Stream(ch)
        s.put("before")
        assert (await s.answer()).WhichOneof("result") == "put"
        await agent.inject(fault_from_spec("partition", {}, id="cut", ttl_seconds=60, match=match))
        s.put("during")
        with pytest.raises(grpc.aio.AioRpcError) as broken:
            await s.answer()
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "dropped by fault 'cut'" in (broken.value.details() or "")
        await agent.recover("cut")

        s = _Stream(ch)
        s.put("warm")
        assert (await s.answer()).WhichOneof("result") == "put"
        await agent.inject(fault_from_spec("delay", {"latency": "300ms"}, id="slow", ttl_seconds=60, match=match))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(10):
            s.put(f"slow-{i}")
        answers = [await s.answer() for _ in range(10)]
        elapsed = loop.time() - start
        await agent.recover("slow")
        assert all(a.WhichOneof("result") == "put" for a in answers), answers
        assert elapsed >= 0.3, f"the delay did not apply to the open stream ({elapsed:.2f}s)"
        assert elapsed < 2.0, f"the delay added up per queued message ({elapsed:.2f}s for 10 x 300 ms)"
        s.outbox.put_nowait(None)
