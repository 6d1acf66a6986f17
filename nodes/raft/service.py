"""gRPC servicers of a Raft member: KV (clients), Cluster (operators) and Peer (other members).

Errors follow the house contract: bad input is INVALID_ARGUMENT naming the
field; a leader-only call on a follower is FAILED_PRECONDITION with
``faultlab-leader: id=host:port`` in trailing metadata (UNAVAILABLE when no
leader is known); an outcome the member cannot vouch for is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from faultlab.nodes.common.node import NodeContext
from faultlab.nodes.raft.messages import ConfChange, ConfChangeType, Message
from faultlab.nodes.raft.node import (
    InvalidArgument,
    NotLeaderError,
    RaftNode,
    RaftNodeError,
    Unavailable,
)
from faultlab.nodes.raft.pipeline import LEADER_METADATA, Outbox, responses
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
log = logging.getLogger("faultlab.raft.service")

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

    # The operations, shared by the unary calls and Pipeline. Each is split in two: a
    # synchronous start that validates and proposes (or registers the read) and returns a
    # future, and a finish that turns the outcome into the response. Errors are RaftNodeErrors,
    # raised by the start or set on the future. Unary calls await the future in their handler;
    # Pipeline answers from the future's callback, with no task per operation.

    def _outcome(self, done: tuple[Any, int]) -> tuple[Any, int]:
        result, index = done
        if isinstance(result, CommandError):
            if result.code == "stale":
                raise InvalidArgument(f"session.sequence: {result.message}")
            raise Unavailable(result.message)
        return result, index

    def _start_put(self, request: pb.PutRequest, timeout: float) -> asyncio.Future[Any]:
        self._check_key(request.key)
        self._check_value(request.value)
        cid, seq = _session(request.session)
        return self.node.propose_future(encode_put(request.key, request.value, cid, seq), timeout)

    def _finish_put(self, request: pb.PutRequest, done: Any) -> pb.PutResponse:
        result, index = self._outcome(done)
        assert isinstance(result, PutResult)
        return pb.PutResponse(header=self._header(index), prev_found=result.prev_found, prev_value=result.prev_value)

    def _start_delete(self, request: pb.DeleteRequest, timeout: float) -> asyncio.Future[Any]:
        self._check_key(request.key)
        cid, seq = _session(request.session)
        return self.node.propose_future(Command(OP_DELETE, request.key, b"", cid, seq).encode(), timeout)

    def _finish_delete(self, request: pb.DeleteRequest, done: Any) -> pb.DeleteResponse:
        result, index = self._outcome(done)
        assert isinstance(result, DeleteResult)
        return pb.DeleteResponse(header=self._header(index), deleted=result.deleted)

    def _start_cas(self, request: pb.CompareAndSwapRequest, timeout: float) -> asyncio.Future[Any]:
        self._check_key(request.key)
        self._check_value(request.value)
        self._check_value(request.expected, "expected")
        cid, seq = _session(request.session)
        cmd = Command(OP_CAS, request.key, request.value, cid, seq, request.expect_found, request.expected)
        return self.node.propose_future(cmd.encode(), timeout)

    def _finish_cas(self, request: pb.CompareAndSwapRequest, done: Any) -> pb.CompareAndSwapResponse:
        result, index = self._outcome(done)
        assert isinstance(result, CasResult)
        return pb.CompareAndSwapResponse(header=self._header(index), succeeded=result.succeeded,
                                         found=result.found, current=result.current)

    def _start_read(self, consistency: int, timeout: float) -> asyncio.Future[int]:
        if consistency == pb.READ_CONSISTENCY_SERIALIZABLE:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            fut.set_result(self.node.applied)
            return fut
        if consistency != pb.READ_CONSISTENCY_LINEARIZABLE:
            raise InvalidArgument(f"consistency: unknown value {consistency}")
        return self.node.read_barrier_future(timeout)

    def _start_get(self, request: pb.GetRequest, timeout: float) -> asyncio.Future[int]:
        self._check_key(request.key)
        return self._start_read(request.consistency, timeout)

    def _finish_get(self, request: pb.GetRequest, index: int) -> pb.GetResponse:
        value = self.sm.get(request.key)
        return pb.GetResponse(header=self._header(index), found=value is not None, value=value or b"")

    def _finish_range(self, request: pb.RangeRequest, index: int) -> pb.RangeResponse:
        items, more = self.sm.range(request.prefix, request.limit)
        return pb.RangeResponse(header=self._header(index), more=more,
                                items=[pb.KeyValue(key=k, value=v) for k, v in items])

    # Unary calls.

    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        return await _call(context, self._unary(self._start_put, self._finish_put, request, context))

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        return await _call(context, self._unary(self._start_delete, self._finish_delete, request, context))

    async def CompareAndSwap(self, request: pb.CompareAndSwapRequest,
                             context: grpc.aio.ServicerContext) -> pb.CompareAndSwapResponse:
        return await _call(context, self._unary(self._start_cas, self._finish_cas, request, context))

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        return await _call(context, self._unary(self._start_get, self._finish_get, request, context))

    async def Range(self, request: pb.RangeRequest, context: grpc.aio.ServicerContext) -> pb.RangeResponse:
        def start(r: pb.RangeRequest, timeout: float) -> asyncio.Future[int]:
            return self._start_read(r.consistency, timeout)
        return await _call(context, self._unary(start, self._finish_range, request, context))

    async def _unary(self, start: Callable[[Any, float], asyncio.Future[Any]], finish: Callable[[Any, Any], T],
                     request: Any, context: grpc.aio.ServicerContext) -> T:
        return finish(request, await start(request, _timeout(context)))

    # Pipeline: many operations in flight on one stream, answered by id in any order.

    def _pipeline_ops(self) -> dict[str, tuple[Callable[[Any, float], asyncio.Future[Any]],
                                                Callable[[Any, Any], Any]]]:
        return {"put": (self._start_put, self._finish_put), "get": (self._start_get, self._finish_get),
                "delete": (self._start_delete, self._finish_delete),
                "compare_and_swap": (self._start_cas, self._finish_cas)}

    async def Pipeline(self, request_iterator: AsyncIterator[pb.PipelineRequests],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PipelineResponses]:
        """Starts each operation as it arrives and answers in batches as the futures resolve.

        Every answer ready when the stream can write goes out in one message (at most
        pipeline.BATCH_BYTES), so a commit that resolves many writes at once costs one write.
        At most PIPELINE_WINDOW operations of one stream are in flight; beyond that the
        stream's reader waits, which pushes back on the client through gRPC flow control.
        """
        loop = asyncio.get_running_loop()
        ops = self._pipeline_ops()
        unbounded = context.time_remaining() is None
        answers = Outbox(responses)
        post = answers.put
        room: asyncio.Future[None] | None = None
        in_flight = 0

        def error(rid: int, exc: BaseException) -> pb.PipelineResponse:
            if isinstance(exc, NotLeaderError):
                err = pb.PipelineError(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message=str(exc),
                                       leader=f"{exc.leader_id}={exc.leader_address}")
            elif isinstance(exc, RaftNodeError):
                err = pb.PipelineError(code=_CODES.get(exc.code, grpc.StatusCode.UNKNOWN).value[0], message=str(exc))
            else:
                err = pb.PipelineError(code=grpc.StatusCode.UNKNOWN.value[0], message=f"internal error: {exc!r}")
            return pb.PipelineResponse(id=rid, error=err)

        def answered(rid: int, op: str, request: Any, finish: Callable[[Any, Any], Any],
                     fut: asyncio.Future[Any]) -> None:
            nonlocal in_flight, room
            in_flight -= 1
            if room is not None and not room.done():
                room.set_result(None)
            if fut.cancelled():
                post(error(rid, Unavailable("the operation was cancelled; outcome unknown")))
                return
            exc = fut.exception()
            if exc is None:
                try:
                    post(pb.PipelineResponse(id=rid, **{op: finish(request, fut.result())}))
                    return
                except RaftNodeError as finish_exc:
                    exc = finish_exc
            post(error(rid, exc))

        def start(request: pb.PipelineRequest) -> None:
            nonlocal in_flight
            op = request.WhichOneof("op")
            rid = request.id
            if op not in ops:
                post(error(rid, InvalidArgument("op: set one of put, get, delete, compare_and_swap")))
                return
            begin, finish = ops[op]
            body = getattr(request, op)
            try:
                fut = begin(body, DEFAULT_TIMEOUT if unbounded else _timeout(context))
            except RaftNodeError as exc:
                post(error(rid, exc))
                return
            in_flight += 1
            fut.add_done_callback(functools.partial(answered, rid, op, body, finish))

        observe = self.node.metrics.pipeline_batch.observe

        async def read() -> None:
            nonlocal room
            try:
                async for batch in request_iterator:
                    observe(len(batch.requests))
                    for request in batch.requests:
                        while in_flight >= PIPELINE_WINDOW:
                            room = loop.create_future()
                            await room
                        start(request)
                while in_flight:
                    room = loop.create_future()
                    await room
            except (grpc.RpcError, grpc.aio.AbortError) as exc:
                # The client went away, or a fault aborted the stream (its status is already set).
                log.debug("pipeline stream ended: %s", exc)
            finally:
                answers.close()

        reader = loop.create_task(read())
        try:
            async for batch in answers.batches():
                yield batch
        finally:
            reader.cancel()


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
        metadata = context.invocation_metadata()
        transport.learn_address(metadata)
        messages = [message_from_proto(m) for m in request.messages]
        peer = transport.wants_reply(messages, metadata)
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
