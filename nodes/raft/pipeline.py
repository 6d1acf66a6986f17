"""Client side of ``KV.Pipeline``: many KV operations in flight on one gRPC stream per channel.

A unary call costs the server an accepted call, a handler task and three
completion-queue round trips; on a pipeline each operation is one message each
way. :class:`Pipe` tags requests with ids, matches answers back (in any order)
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
from collections.abc import AsyncIterator
from typing import Any

import grpc

from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc

LEADER_METADATA = "faultlab-leader"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str, leader: str = "") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((LEADER_METADATA, leader)) if leader else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


def _expire(fut: asyncio.Future[pb.PipelineResponse], timeout: float) -> None:
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
        self._outbox: asyncio.Queue[pb.PipelineRequest | None] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def call(self, op: str, request: Any, timeout: float) -> Any:
        """Sends ``request`` as ``op`` (put, get, delete, compare_and_swap); its response, or AioRpcError."""
        if self._reader is None or self._reader.done():
            self._open()
        assert self._outbox is not None
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[pb.PipelineResponse] = loop.create_future()
        self._pending[rid] = fut
        self._outbox.put_nowait(pb.PipelineRequest(id=rid, **{op: request}))
        # A timer on the future, not asyncio.wait_for: wait_for costs a waiter future and
        # callbacks per call, several times what the operation itself costs this client.
        timer = loop.call_later(timeout, _expire, fut, timeout)
        try:
            answer = await fut
        finally:
            timer.cancel()
            self._pending.pop(rid, None)
        if answer.WhichOneof("result") == "error":
            e = answer.error
            raise rpc_error(_CODES.get(e.code, grpc.StatusCode.UNKNOWN), e.message, e.leader)
        return getattr(answer, op)

    def _open(self) -> None:
        outbox: asyncio.Queue[pb.PipelineRequest | None] = asyncio.Queue()
        self._outbox = outbox

        async def requests() -> AsyncIterator[pb.PipelineRequest]:
            while (request := await outbox.get()) is not None:
                yield request

        stream = pb_grpc.KVStub(self.channel).Pipeline(requests())
        self._reader = asyncio.ensure_future(self._read(stream, outbox))

    async def _read(self, stream: Any, outbox: asyncio.Queue[pb.PipelineRequest | None]) -> None:
        error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the pipeline stream ended; outcome unknown")
        try:
            async for answer in stream:
                fut = self._pending.get(answer.id)
                if fut is not None and not fut.done():
                    fut.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.supported = False
            error = rpc_error(exc.code() if exc.code() != grpc.StatusCode.CANCELLED else
                              grpc.StatusCode.UNAVAILABLE, f"pipeline stream: {exc.details()}; outcome unknown")
        finally:
            outbox.put_nowait(None)
            if self._outbox is outbox:
                self._outbox = None
            for fut in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(error)

    async def close(self) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
