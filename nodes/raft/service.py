"""gRPC servicers of a Raft member: KV (clients), Cluster (operators) and Peer (other members).

Errors follow the house contract: bad input is INVALID_ARGUMENT naming the
field; a leader-only call on a follower is FAILED_PRECONDITION with
``faultlab-leader: id=host:port`` in trailing metadata (UNAVAILABLE when no
leader is known); an outcome the member cannot vouch for is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc

from faultlab.nodes.common.node import NodeContext
from faultlab.nodes.raft.messages import ConfChange, ConfChangeType, Message
from faultlab.nodes.raft.node import (
    LEADER_METADATA,
    InvalidArgument,
    NotLeaderError,
    RaftNode,
    RaftNodeError,
    Unavailable,
)
from faultlab.nodes.raft.statemachine import (
    OP_CAS,
    OP_DELETE,
    CasResult,
    Command,
    CommandError,
    DeleteResult,
    KVStateMachine,
    PutResult,
    StateMachine,
    encode_put,
)
from faultlab.nodes.raft.transport import REPLY_METADATA, message_from_proto
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
# Operations of one Pipeline stream being handled at once; the stream's reader waits beyond that.
PIPELINE_WINDOW = 1024
MEMBERSHIP_TIMEOUT = 30.0

try:
    VERSION = importlib.metadata.version("faultlab")
except importlib.metadata.PackageNotFoundError:
    VERSION = "0"

_CODES = {
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _timeout(context: grpc.aio.ServicerContext, default: float = DEFAULT_TIMEOUT) -> float:
    remaining = context.time_remaining()
    if remaining is None:
        return default
    return max(0.001, min(remaining - 0.05, remaining * 0.9))


async def _call(context: grpc.aio.ServicerContext, coro: Awaitable[T]) -> T:
    try:
        return await coro
    except NotLeaderError as exc:
        context.set_trailing_metadata(((LEADER_METADATA, f"{exc.leader_id}={exc.leader_address}"),))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except RaftNodeError as exc:
        await context.abort(_CODES.get(exc.code, grpc.StatusCode.UNKNOWN), str(exc))
    raise AssertionError("unreachable")


def _session(s: pb.Session) -> tuple[str, int]:
    if s.client_id and not s.sequence:
        raise InvalidArgument("session.sequence: must be >= 1 when session.client_id is set")
    if s.sequence and not s.client_id:
        raise InvalidArgument("session.client_id: must not be empty when session.sequence is set")
    return s.client_id, s.sequence


class KVService(pb_grpc.KVServicer):
    def __init__(self, node: RaftNode, sm: KVStateMachine) -> None:
        self.node = node
        self.sm = sm
        self.max_value = node.opts.max_value_bytes

    def _header(self, index: int) -> pb.ResponseHeader:
        return pb.ResponseHeader(member_id=self.node.id, term=self.node.term, index=index)

    def _check_key(self, key: bytes) -> None:
        if not key:
            raise InvalidArgument("key: must not be empty")

    def _check_value(self, value: bytes, field: str = "value") -> None:
        if len(value) > self.max_value:
            raise InvalidArgument(f"{field}: {len(value)} bytes exceeds --max-value-bytes={self.max_value}")

    async def _propose(self, data: bytes, timeout: float) -> tuple[Any, int]:
        result, index = await self.node.propose(data, timeout)
        if isinstance(result, CommandError):
            if result.code == "stale":
                raise InvalidArgument(f"session.sequence: {result.message}")
            raise Unavailable(result.message)
        return result, index

    # The operations, shared by the unary calls and Pipeline; errors are RaftNodeErrors.

    async def _put(self, request: pb.PutRequest, timeout: float) -> pb.PutResponse:
        self._check_key(request.key)
        self._check_value(request.value)
        cid, seq = _session(request.session)
        result, index = await self._propose(encode_put(request.key, request.value, cid, seq), timeout)
        assert isinstance(result, PutResult)
        return pb.PutResponse(header=self._header(index), prev_found=result.prev_found, prev_value=result.prev_value)

    async def _delete(self, request: pb.DeleteRequest, timeout: float) -> pb.DeleteResponse:
        self._check_key(request.key)
        cid, seq = _session(request.session)
        result, index = await self._propose(Command(OP_DELETE, request.key, b"", cid, seq).encode(), timeout)
        assert isinstance(result, DeleteResult)
        return pb.DeleteResponse(header=self._header(index), deleted=result.deleted)

    async def _cas(self, request: pb.CompareAndSwapRequest, timeout: float) -> pb.CompareAndSwapResponse:
        self._check_key(request.key)
        self._check_value(request.value)
        self._check_value(request.expected, "expected")
        cid, seq = _session(request.session)
        cmd = Command(OP_CAS, request.key, request.value, cid, seq, request.expect_found, request.expected)
        result, index = await self._propose(cmd.encode(), timeout)
        assert isinstance(result, CasResult)
        return pb.CompareAndSwapResponse(header=self._header(index), succeeded=result.succeeded,
                                         found=result.found, current=result.current)

    async def _read_point(self, consistency: int, timeout: float) -> int:
        if consistency == pb.READ_CONSISTENCY_SERIALIZABLE:
            return self.node.applied
        if consistency != pb.READ_CONSISTENCY_LINEARIZABLE:
            raise InvalidArgument(f"consistency: unknown value {consistency}")
        return await self.node.read_barrier(timeout)

    async def _get(self, request: pb.GetRequest, timeout: float) -> pb.GetResponse:
        self._check_key(request.key)
        index = await self._read_point(request.consistency, timeout)
        value = self.sm.get(request.key)
        return pb.GetResponse(header=self._header(index), found=value is not None, value=value or b"")

    async def _range(self, request: pb.RangeRequest, timeout: float) -> pb.RangeResponse:
        index = await self._read_point(request.consistency, timeout)
        items, more = self.sm.range(request.prefix, request.limit)
        return pb.RangeResponse(header=self._header(index), more=more,
                                items=[pb.KeyValue(key=k, value=v) for k, v in items])

    # Unary calls.

    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        return await _call(context, self._put(request, _timeout(context)))

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        return await _call(context, self._delete(request, _timeout(context)))

    async def CompareAndSwap(self, request: pb.CompareAndSwapRequest,
                             context: grpc.aio.ServicerContext) -> pb.CompareAndSwapResponse:
        return await _call(context, self._cas(request, _timeout(context)))

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        return await _call(context, self._get(request, _timeout(context)))

    async def Range(self, request: pb.RangeRequest, context: grpc.aio.ServicerContext) -> pb.RangeResponse:
        return await _call(context, self._range(request, _timeout(context)))

    # Pipeline: many operations in flight on one stream, answered by id in any order.

    async def _pipelined(self, request: pb.PipelineRequest, timeout: float) -> pb.PipelineResponse:
        op = request.WhichOneof("op")
        try:
            if op == "put":
                return pb.PipelineResponse(id=request.id, put=await self._put(request.put, timeout))
            if op == "get":
                return pb.PipelineResponse(id=request.id, get=await self._get(request.get, timeout))
            if op == "delete":
                return pb.PipelineResponse(id=request.id, delete=await self._delete(request.delete, timeout))
            if op == "compare_and_swap":
                return pb.PipelineResponse(id=request.id,
                                           compare_and_swap=await self._cas(request.compare_and_swap, timeout))
            raise InvalidArgument("op: set one of put, get, delete, compare_and_swap")
        except NotLeaderError as exc:
            error = pb.PipelineError(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message=str(exc),
                                     leader=f"{exc.leader_id}={exc.leader_address}")
        except RaftNodeError as exc:
            code = _CODES.get(exc.code, grpc.StatusCode.UNKNOWN)
            error = pb.PipelineError(code=code.value[0], message=str(exc))
        return pb.PipelineResponse(id=request.id, error=error)

    async def Pipeline(self, request_iterator: AsyncIterator[pb.PipelineRequest],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PipelineResponse]:
        answers: asyncio.Queue[pb.PipelineResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(PIPELINE_WINDOW)
        running: set[asyncio.Task[None]] = set()

        async def handle(request: pb.PipelineRequest) -> None:
            try:
                answers.put_nowait(await self._pipelined(request, _timeout(context)))
            finally:
                window.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.ensure_future(handle(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
            finally:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()


class ClusterService(pb_grpc.ClusterServicer):
    def __init__(self, node: RaftNode) -> None:
        self.node = node

    def _members(self) -> list[pb.Member]:
        return [pb.Member(id=i, address=a, voter=v, match_index=m, next_index=n)
                for i, a, v, m, n in self.node.members()]

    def _membership(self, index: int) -> pb.MembershipResponse:
        node = self.node
        return pb.MembershipResponse(header=pb.ResponseHeader(member_id=node.id, term=node.term, index=index),
                                     members=self._members())

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        node = self.node
        st = node.status()
        return pb.StatusResponse(
            id=node.id, role=node.role_enum(), term=st.term, leader_id=st.leader_id,
            leader_address=node.addresses.get(st.leader_id, "") if st.leader_id else "",
            commit_index=st.commit, applied_index=node.applied, last_index=st.last_index,
            snapshot_index=st.snapshot_index, members=self._members(), version=VERSION)

    async def AddLearner(self, request: pb.AddLearnerRequest,
                         context: grpc.aio.ServicerContext) -> pb.MembershipResponse:
        async def run() -> pb.MembershipResponse:
            if not request.id:
                raise InvalidArgument("id: must not be empty")
            if not request.address or ":" not in request.address:
                raise InvalidArgument(f"address: {request.address!r} is not host:port")
            self.node.require_leader()
            st = self.node.status()
            if request.id in st.conf.voters or request.id in st.conf.learners:
                if self.node.addresses.get(request.id) == request.address:
                    return self._membership(st.commit)
                raise InvalidArgument(f"id: {request.id!r} is already a member; remove it first")
            cc = ConfChange(ConfChangeType.ADD_LEARNER, request.id, request.address)
            index = await self.node.change_membership(cc, _timeout(context, MEMBERSHIP_TIMEOUT))
            return self._membership(index)
        return await _call(context, run())

    async def PromoteLearner(self, request: pb.PromoteLearnerRequest,
                             context: grpc.aio.ServicerContext) -> pb.MembershipResponse:
        async def run() -> pb.MembershipResponse:
            if not request.id:
                raise InvalidArgument("id: must not be empty")
            self.node.require_leader()
            if request.id in self.node.status().conf.voters:
                return self._membership(self.node.status().commit)
            index = await self.node.promote_learner(request.id, _timeout(context, MEMBERSHIP_TIMEOUT))
            return self._membership(index)
        return await _call(context, run())

    async def RemoveMember(self, request: pb.RemoveMemberRequest,
                           context: grpc.aio.ServicerContext) -> pb.MembershipResponse:
        async def run() -> pb.MembershipResponse:
            if not request.id:
                raise InvalidArgument("id: must not be empty")
            index = await self.node.remove_member(request.id, _timeout(context, MEMBERSHIP_TIMEOUT))
            return self._membership(index)
        return await _call(context, run())

    async def TransferLeadership(self, request: pb.TransferLeadershipRequest,
                                 context: grpc.aio.ServicerContext) -> pb.TransferLeadershipResponse:
        async def run() -> pb.TransferLeadershipResponse:
            leader = await self.node.transfer_leadership(request.target_id, _timeout(context))
            return pb.TransferLeadershipResponse(leader_id=leader)
        return await _call(context, run())

    async def Snapshot(self, request: pb.SnapshotRequest,
                       context: grpc.aio.ServicerContext) -> pb.SnapshotResponse:
        async def run() -> pb.SnapshotResponse:
            snap = await self.node.snapshot_now()
            if snap is None:
                return pb.SnapshotResponse()
            return pb.SnapshotResponse(index=snap.meta.index, term=snap.meta.term, size_bytes=len(snap.data))
        return await _call(context, run())


class PeerService(pb_grpc.PeerServicer):
    def __init__(self, node: RaftNode) -> None:
        self.node = node

    async def Send(self, request: pb.MessageBatch, context: grpc.aio.ServicerContext) -> pb.SendAck:
        node = self.node
        assert node.transport is not None
        transport = node.transport
        transport.learn_address(context.invocation_metadata())
        messages = [message_from_proto(m) for m in request.messages]
        peer = transport.wants_reply(messages)
        node.step(messages)
        if peer:
            reply = await transport.hold(peer)
            if reply is not None:
                context.set_trailing_metadata(((REPLY_METADATA, reply),))
        return pb.SendAck()

    async def InstallSnapshot(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> pb.SendAck:
        node = self.node
        assert node.transport is not None
        node.transport.learn_address(context.invocation_metadata())
        first: pb.RaftMessage | None = None
        buf = bytearray()
        async for chunk in request_iterator:
            if chunk.HasField("message"):
                first = chunk.message
            if chunk.offset != len(buf):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"offset: chunk at {chunk.offset}, expected {len(buf)}")
            buf += chunk.data
            if chunk.last:
                break
        if first is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "message: the first chunk must carry it")
        assert first is not None
        msg: Message = message_from_proto(first, bytes(buf))
        addresses = dict(first.snapshot.addresses)
        for k, v in addresses.items():
            if k != node.id:
                node.addresses.setdefault(k, v)
        node.step([msg])
        return pb.SendAck()


def add_services(server: grpc.aio.Server, ctx: NodeContext, node: RaftNode, sm: StateMachine) -> None:
    if isinstance(sm, KVStateMachine):
        pb_grpc.add_KVServicer_to_server(KVService(node, sm), server)
        ctx.add_service_name(pb.DESCRIPTOR.services_by_name["KV"].full_name)
    pb_grpc.add_ClusterServicer_to_server(ClusterService(node), server)
    pb_grpc.add_PeerServicer_to_server(PeerService(node), server)
    ctx.add_service_name(pb.DESCRIPTOR.services_by_name["Cluster"].full_name)
    ctx.add_service_name(pb.DESCRIPTOR.services_by_name["Peer"].full_name)
