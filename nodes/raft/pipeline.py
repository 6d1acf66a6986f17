"""``KV.Pipeline``: many KV operations in flight on one gRPC stream per channel, in batches.

A unary call costs the server an accepted call, a handler task and three
completion-queue round trips; on a pipeline each operation is part of one message
each way, and each message carries every operation (or answer) that was ready
when the stream could write: an :class:`Outbox`, used by both ends. Nothing waits
to fill a batch; operations that arrive while a write is in flight share the next.
:class:`Pipe` tags requests with ids, matches answers back (in any order)
and turns each answer's ``PipelineError`` into the ``grpc.aio.AioRpcError`` the
unary call would have raised (``faultlab-leader`` included), so callers keep one
error path: redirects, retries with the same session and timeouts work as they
do for unary calls. A broken stream fails what was in flight with UNAVAILABLE
(outcome unknown, retried by the caller with the same session) and the next
operation opens a new one. A server without ``Pipeline`` (UNIMPLEMENTED) marks
the pipe unsupported and the caller falls back to unary calls.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc

from faultlab.nodes.common.deadlines import Deadlines
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc

# Trailing metadata naming the leader ("id=host:port") on FAILED_PRECONDITION: the one definition
# the servicers, the clients and the chaos workload share.
LEADER_METADATA = "faultlab-leader"
# One stream message holds operations up to this size (at least one): well inside the 64 MiB
# both ends accept, and small enough not to hold the stream for long.
BATCH_BYTES = 4 << 20
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Sized(Protocol):
    def ByteSize(self) -> int: ...


M = TypeVar("M", bound=_Sized)
B = TypeVar("B")


def batch_size(items: list[M], limit: int = BATCH_BYTES) -> int:
    """How many of ``items``, from the front, fit in one message of ``limit`` bytes (at least one)."""
    size = 0
    for n, item in enumerate(items):
        size += item.ByteSize()
        if size > limit and n:
            return n
    return len(items)


class Outbox(Generic[M, B]):
    """Messages waiting for one stream, written as batches of everything ready at each write."""

    def __init__(self, wrap: Callable[[list[M]], B], limit: int = BATCH_BYTES) -> None:
        self._wrap = wrap
        self._limit = limit
        self._items: list[M] = []
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: M) -> None:
        self._items.append(item)
        self._wake()

    def close(self) -> None:
        """Ends :meth:`batches` once what is queued has been handed out."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def batches(self) -> AsyncIterator[B]:
        while True:
            if self._items:
                n = batch_size(self._items, self._limit)
                batch = self._wrap(self._items[:n])
                del self._items[:n]
                yield batch
                continue
            if self._closed:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None


def _requests(items: list[pb.PipelineRequest]) -> pb.PipelineRequests:
    return pb.PipelineRequests(requests=items)


def responses(items: list[pb.PipelineResponse]) -> pb.PipelineResponses:
    return pb.PipelineResponses(responses=items)


def rpc_error(code: grpc.StatusCode, details: str, leader: str = "") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((LEADER_METADATA, leader)) if leader else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


def _expire(fut: asyncio.Future[Any], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no answer on the pipeline within {timeout:.2f}s; outcome unknown"))


class Pipe:
    """One ``KV.Pipeline`` stream on ``channel``, opened on first use and again after it breaks."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.supported = True
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[pb.PipelineResponse]] = {}
        self._outbox: Outbox[pb.PipelineRequest, pb.PipelineRequests] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._deadlines = Deadlines()

    async def call(self, op: str, request: Any, timeout: float) -> Any:
        """Sends ``request`` as ``op`` (put, get, delete, compare_and_swap); its response, or AioRpcError."""
        if self._reader is None or self._reader.done():
            self._open()
        assert self._outbox is not None
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[pb.PipelineResponse] = loop.create_future()
        self._pending[rid] = fut
        self._outbox.put(pb.PipelineRequest(id=rid, **{op: request}))
        # Not asyncio.wait_for, nor a timer of its own: either costs more per call than the
        # operation's other bookkeeping in this client.
        self._deadlines.add(fut, timeout, _expire, timeout)
        try:
            answer = await fut
        finally:
            self._pending.pop(rid, None)
        if answer.WhichOneof("result") == "error":
            e = answer.error
            raise rpc_error(_CODES.get(e.code, grpc.StatusCode.UNKNOWN), e.message, e.leader)
        return getattr(answer, op)

    def _open(self) -> None:
        outbox = self._outbox = Outbox(_requests)
        stream = pb_grpc.KVStub(self.channel).Pipeline(outbox.batches())
        self._reader = asyncio.ensure_future(self._read(stream, outbox))

    async def _read(self, stream: Any, outbox: Outbox[pb.PipelineRequest, pb.PipelineRequests]) -> None:
        error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the pipeline stream ended; outcome unknown")
        try:
            async for batch in stream:
                for answer in batch.responses:
                    fut = self._pending.get(answer.id)
                    if fut is not None and not fut.done():
                        fut.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.supported = False
            error = rpc_error(exc.code() if exc.code() != grpc.StatusCode.CANCELLED else
                              grpc.StatusCode.UNAVAILABLE, f"pipeline stream: {exc.details()}; outcome unknown")
        finally:
            outbox.close()
            if self._outbox is outbox:
                self._outbox = None
            for fut in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(error)

    async def close(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
