"""RaftClient against scripted in-process servers: redirects, retries with the same session, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from faultlab.nodes.raft.client import (
    FailedPrecondition,
    InvalidArgument,
    NoLeaderError,
    RaftClient,
    RaftTimeout,
    SyncRaftClient,
)
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc

Script = Callable[[pb.PutRequest, grpc.aio.ServicerContext], object]


class ScriptedKV(pb_grpc.KVServicer):
    def __init__(self) -> None:
        self.calls: list[pb.PutRequest] = []
        self.script: Script | None = None

    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        self.calls.append(request)
        if self.script is not None:
            action = self.script(request, context)
            if isinstance(action, tuple):
                code, message, metadata = action
                if metadata:
                    context.set_trailing_metadata(metadata)
                await context.abort(code, message)
        return pb.PutResponse(header=pb.ResponseHeader(index=len(self.calls)))


@pytest.fixture
async def servers() -> AsyncIterator[list[tuple[str, ScriptedKV]]]:
    made = []
    for _ in range(2):
        server = grpc.aio.server()
        kv = ScriptedKV()
        pb_grpc.add_KVServicer_to_server(kv, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        made.append((server, f"127.0.0.1:{port}", kv))
    yield [(addr, kv) for _, addr, kv in made]
    for server, _, _ in made:
        await server.stop(None)


async def test_follows_leader_redirect(servers: list[tuple[str, ScriptedKV]]) -> None:
    (a_addr, a), (b_addr, b) = servers
    a.script = lambda req, ctx: (grpc.StatusCode.FAILED_PRECONDITION, "not the leader",
                                 (("faultlab-leader", f"n2={b_addr}"),))
    async with RaftClient([a_addr]) as client:
        await client.put("k", "v")
        await client.put("k", "v2")
    assert len(a.calls) == 1, "after one redirect the client remembers the leader"
    assert len(b.calls) == 2


async def test_redirect_uses_the_address_the_client_knows_for_the_leader_id(
        servers: list[tuple[str, ScriptedKV]]) -> None:
    (a_addr, a), (b_addr, b) = servers
    # The member advertises a name only its cluster resolves (as a pod's DNS name on Kubernetes).
    a.script = lambda req, ctx: (grpc.StatusCode.FAILED_PRECONDITION, "not the leader",
                                 (("faultlab-leader", "n2=n2.demo.default.svc:7000"),))
    async with RaftClient({"n1": a_addr, "n2": b_addr}, timeout=3.0) as client:
        await client.put("k", "v")
    # Whichever member it tried first, one write reached n2 and n1 answered at most the redirect.
    assert len(b.calls) == 1 and len(a.calls) <= 1, "the redirect went straight to n2's known address"

    class Redirect:
        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("faultlab-leader", "n2=n2.demo.default.svc:7000"),)

    known = RaftClient({"n1": a_addr, "n2": b_addr})
    assert known._hint_address(Redirect()) == b_addr  # type: ignore[arg-type]
    unknown = RaftClient([a_addr])
    assert unknown._hint_address(Redirect()) == "n2.demo.default.svc:7000"  # type: ignore[arg-type]


async def test_pipeline_falls_back_to_unary_calls_where_the_server_has_none(
        servers: list[tuple[str, ScriptedKV]]) -> None:
    (addr, kv), _ = servers  # ScriptedKV implements Put only: Pipeline is UNIMPLEMENTED
    async with RaftClient([addr], pipeline=True) as client:
        await client.put("k", "v")
        await client.put("k", "w")
        assert [p.supported for p in client._pipes.values()] == [False]
    assert len(kv.calls) == 2, "both writes went through unary Put, once each"


async def test_retries_unavailable_with_the_same_session(servers: list[tuple[str, ScriptedKV]]) -> None:
    (addr, kv), _ = servers
    failures = iter([True, True, False, False])
    kv.script = lambda req, ctx: (grpc.StatusCode.UNAVAILABLE, "leadership lost", None) if next(failures) else None
    async with RaftClient([addr]) as client:
        await client.put("k", "v")
        await client.put("k", "w")
    sessions = [(c.session.client_id, c.session.sequence) for c in kv.calls]
    assert sessions[0] == sessions[1] == sessions[2], "a retry reuses (client_id, sequence)"
    assert sessions[3][0] == sessions[0][0] and sessions[3][1] == sessions[0][1] + 1


async def test_concurrent_calls_use_distinct_session_slots(servers: list[tuple[str, ScriptedKV]]) -> None:
    (addr, kv), _ = servers
    async with RaftClient([addr]) as client:
        await asyncio.gather(*(client.put(f"k{i}", "v") for i in range(10)))
    sessions = {(c.session.client_id, c.session.sequence) for c in kv.calls}
    assert len(sessions) == 10


async def test_invalid_argument_and_failed_precondition_surface(servers: list[tuple[str, ScriptedKV]]) -> None:
    (addr, kv), _ = servers
    kv.script = lambda req, ctx: (grpc.StatusCode.INVALID_ARGUMENT, "key: must not be empty", None)
    async with RaftClient([addr]) as client:
        with pytest.raises(InvalidArgument, match="key: must not be empty"):
            await client.put("", "v")
        kv.script = lambda req, ctx: (grpc.StatusCode.FAILED_PRECONDITION, "learner n4 has not caught up", None)
        with pytest.raises(FailedPrecondition, match="n4 has not caught up"):
            await client.put("k", "v")


async def test_gives_up_at_the_deadline(servers: list[tuple[str, ScriptedKV]]) -> None:
    (addr, kv), _ = servers
    kv.script = lambda req, ctx: (grpc.StatusCode.UNAVAILABLE, "member n1 is not the leader and no leader is "
                                  "known; retry later", None)
    async with RaftClient([addr], timeout=0.3) as client:
        with pytest.raises(NoLeaderError) as err:
            await client.put("k", "v")
        assert err.value.maybe_applied
        kv.script = lambda req, ctx: (grpc.StatusCode.DEADLINE_EXCEEDED, "entry 7 was not applied in time", None)
        with pytest.raises(RaftTimeout):
            await client.put("k", "v")




async def test_sync_client_in_thread(servers: list[tuple[str, ScriptedKV]]) -> None:
    (addr, _), _ = servers

    def use() -> int:
        with SyncRaftClient([addr]) as c:
            return c.put("k", "v").index
    assert await asyncio.to_thread(use) == 1
