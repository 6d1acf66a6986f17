"""Client of a faultlab Raft KV cluster (grpc.aio), plus a small synchronous wrapper.

:class:`RaftClient` finds the leader, follows ``faultlab-leader`` redirects and
retries UNAVAILABLE/DEADLINE_EXCEEDED with backoff. Writes carry a session
``(client_id, sequence)`` that stays the SAME across retries, so a retried write
applies at most once. Concurrent calls on one client use separate session slots
(``<client_id>/<slot>``), each with one call in flight.

Errors: :class:`InvalidArgument` (the server's message, naming the field),
:class:`NoLeaderError` (no leader answered before the deadline),
:class:`FailedPrecondition` (a refused admin call), :class:`RaftTimeout` (the
deadline passed; for a write the outcome is unknown). All derive from
:class:`RaftError`; ``maybe_applied`` says whether a write may have happened.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from faultlab.nodes.raft.pipeline import LEADER_METADATA, Pipe
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc

T = TypeVar("T")

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000),
                   ("grpc.enable_retries", 0)]


class RaftError(Exception):
    maybe_applied = False


class InvalidArgument(RaftError):
    """The server rejected the request; the message names the field."""


class FailedPrecondition(RaftError):
    """An admin call the cluster refused (e.g. a learner not caught up)."""


class NoLeaderError(RaftError):
    """No member acted as leader before the deadline."""


class RaftTimeout(RaftError):
    """The call's deadline passed; a write's outcome is unknown."""


@dataclass(frozen=True)
class Put:
    index: int
    prev_found: bool
    prev_value: bytes


@dataclass(frozen=True)
class Cas:
    index: int
    succeeded: bool
    found: bool
    current: bytes


def _bytes(v: bytes | str) -> bytes:
    return v.encode() if isinstance(v, str) else v


class _Slot:
    __slots__ = ("client_id", "sequence")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.sequence = 0


_UNARY = {"put": "Put", "get": "Get", "delete": "Delete", "compare_and_swap": "CompareAndSwap"}


class RaftClient:
    """Async client. ``addresses``: ["host:port", ...] or {member_id: "host:port"}.

    ``pipeline=True`` sends Put/Get/Delete/CompareAndSwap over one ``KV.Pipeline`` stream per
    member instead of a unary call each (same semantics and errors, far less server work per
    operation; it pays when many calls are in flight). A member without Pipeline gets unary calls.
    """

    def __init__(self, addresses: list[str] | dict[str, str], *, timeout: float = 10.0,
                 attempt_timeout: float = 2.0, client_id: str | None = None, pipeline: bool = False) -> None:
        if isinstance(addresses, dict):
            self.members = dict(addresses)
            self.addresses = list(addresses.values())
        else:
            self.addresses = list(addresses)
            self.members = {}
        if not self.addresses:
            raise ValueError("RaftClient: at least one address is required")
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.client_id = client_id or uuid.uuid4().hex[:16]
        self.leader: str | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._kv_stubs: dict[int, pb_grpc.KVStub] = {}
        self.pipeline = pipeline
        self._pipes: dict[int, Pipe] = {}
        self._free_slots: list[_Slot] = []
        self._slot_ids = itertools.count()
        self._rr = random.randrange(len(self.addresses))

    # ------------------------------------------------------------------ plumbing

    def _channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return ch

    def _kv(self, ch: grpc.aio.Channel) -> pb_grpc.KVStub:
        """The KV stub of one of this client's channels, built once (stubs build callables)."""
        stub = self._kv_stubs.get(id(ch))
        if stub is None:
            stub = self._kv_stubs[id(ch)] = pb_grpc.KVStub(ch)
        return stub

    def _address(self, member: str) -> str:
        return self.members.get(member, member)

    async def _op(self, ch: grpc.aio.Channel, op: str, request: Any, timeout: float) -> Any:
        """One KV operation on ``ch``: over its pipeline when enabled and supported, else unary."""
        if self.pipeline:
            pipe = self._pipes.get(id(ch))
            if pipe is None:
                pipe = self._pipes[id(ch)] = Pipe(ch)
            if pipe.supported:
                try:
                    return await pipe.call(op, request, timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
        return await getattr(self._kv(ch), _UNARY[op])(request, timeout=timeout)

    def _hint_address(self, exc: grpc.aio.AioRpcError) -> str | None:
        """Where a redirect points: the address this client knows for the leader's id first.

        The member's own address (a cluster DNS name on Kubernetes) may not resolve
        where the client runs; an address given for that id when the client was built does.
        """
        hint = _leader_hint(exc)
        if hint is None:
            return None
        leader_id, address = hint
        return self.members.get(leader_id) or address or None

    def _next_address(self) -> str:
        self._rr = (self._rr + 1) % len(self.addresses)
        return self.addresses[self._rr]

    async def close(self) -> None:
        for pipe in self._pipes.values():
            await pipe.close()
        self._pipes.clear()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._kv_stubs.clear()

    async def __aenter__(self) -> RaftClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _take_slot(self) -> _Slot:
        if self._free_slots:
            return self._free_slots.pop()
        return _Slot(f"{self.client_id}/{next(self._slot_ids)}")

    async def _leader_call(self, make: Callable[[grpc.aio.Channel, float], Awaitable[T]], *, write: bool,
                           timeout: float | None = None) -> T:
        """Runs ``make(channel, attempt_timeout)`` against the leader with redirects and retries."""
        loop = asyncio.get_running_loop()
        total = self.timeout if timeout is None else timeout
        deadline = loop.time() + total
        backoff = 0.01
        sent = False
        last_error = "no attempt"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            address = self.leader or self._next_address()
            try:
                sent = True
                return await make(self._channel(address), min(remaining, self.attempt_timeout))
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    hint = self._hint_address(exc)
                    if hint is None:
                        raise FailedPrecondition(exc.details()) from None
                    self.leader = hint if hint != address else None
                    if hint == address:
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 0.5)
                    continue
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgument(exc.details()) from None
                if code not in RETRYABLE:
                    raise RaftError(f"{code.name}: {exc.details()}") from None
                last_error = f"{address}: {code.name} {exc.details()}"
                self.leader = None
                await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())))
                backoff = min(backoff * 2, 0.5)
        err: RaftError
        if "no leader" in last_error or "not the leader" in last_error or last_error == "no attempt":
            err = NoLeaderError(f"no leader answered within {total:.1f}s (last: {last_error})")
        else:
            err = RaftTimeout(f"no answer within {total:.1f}s (last: {last_error})")
        err.maybe_applied = write and sent
        raise err

    async def _write(self, fn: Callable[[pb.Session], Callable[[grpc.aio.Channel, float], Awaitable[T]]],
                     timeout: float | None) -> T:
        slot = self._take_slot()
        slot.sequence += 1
        session = pb.Session(client_id=slot.client_id, sequence=slot.sequence)
        try:
            return await self._leader_call(fn(session), write=True, timeout=timeout)
        finally:
            self._free_slots.append(slot)

    # ------------------------------------------------------------------ KV

    async def put(self, key: bytes | str, value: bytes | str, *, timeout: float | None = None) -> Put:
        req = pb.PutRequest(key=_bytes(key), value=_bytes(value))

        def make(session: pb.Session) -> Callable[[grpc.aio.Channel, float], Awaitable[Put]]:
            req.session.CopyFrom(session)

            async def call(ch: grpc.aio.Channel, t: float) -> Put:
                r = await self._op(ch, "put", req, t)
                return Put(r.header.index, r.prev_found, r.prev_value)
            return call
        return await self._write(make, timeout)

    async def delete(self, key: bytes | str, *, timeout: float | None = None) -> bool:
        req = pb.DeleteRequest(key=_bytes(key))

        def make(session: pb.Session) -> Callable[[grpc.aio.Channel, float], Awaitable[bool]]:
            req.session.CopyFrom(session)

            async def call(ch: grpc.aio.Channel, t: float) -> bool:
                return bool((await self._op(ch, "delete", req, t)).deleted)
            return call
        return await self._write(make, timeout)

    async def cas(self, key: bytes | str, expected: bytes | str | None, value: bytes | str, *,
                  timeout: float | None = None) -> Cas:
        """Sets ``value`` if the current value is ``expected`` (None: the key must be absent)."""
        req = pb.CompareAndSwapRequest(key=_bytes(key), value=_bytes(value), expect_found=expected is not None,
                                       expected=_bytes(expected) if expected is not None else b"")

        def make(session: pb.Session) -> Callable[[grpc.aio.Channel, float], Awaitable[Cas]]:
            req.session.CopyFrom(session)

            async def call(ch: grpc.aio.Channel, t: float) -> Cas:
                r = await self._op(ch, "compare_and_swap", req, t)
                return Cas(r.header.index, r.succeeded, r.found, r.current)
            return call
        return await self._write(make, timeout)

    async def get(self, key: bytes | str, *, serializable: bool = False, member: str | None = None,
                  timeout: float | None = None) -> bytes | None:
        """The value or None. Linearizable by default; ``serializable`` reads any member (``member``)."""
        consistency = pb.READ_CONSISTENCY_SERIALIZABLE if serializable else pb.READ_CONSISTENCY_LINEARIZABLE
        req = pb.GetRequest(key=_bytes(key), consistency=consistency)

        async def call(ch: grpc.aio.Channel, t: float) -> bytes | None:
            r = await self._op(ch, "get", req, t)
            return r.value if r.found else None
        if member is not None:
            return await call(self._channel(self._address(member)), timeout or self.timeout)
        return await self._leader_call(call, write=False, timeout=timeout)

    async def range(self, prefix: bytes | str = b"", limit: int = 0, *, serializable: bool = False,
                    timeout: float | None = None) -> tuple[list[tuple[bytes, bytes]], bool]:
        consistency = pb.READ_CONSISTENCY_SERIALIZABLE if serializable else pb.READ_CONSISTENCY_LINEARIZABLE
        req = pb.RangeRequest(prefix=_bytes(prefix), limit=limit, consistency=consistency)

        async def call(ch: grpc.aio.Channel, t: float) -> tuple[list[tuple[bytes, bytes]], bool]:
            r = await self._kv(ch).Range(req, timeout=t)
            return [(kv.key, kv.value) for kv in r.items], r.more
        return await self._leader_call(call, write=False, timeout=timeout)

    # ------------------------------------------------------------------ cluster admin

    async def status(self, member: str | None = None, *, timeout: float = 2.0) -> pb.StatusResponse:
        """Status of ``member`` (id or host:port), or of the current leader."""
        if member is not None:
            return await pb_grpc.ClusterStub(self._channel(self._address(member))).Status(
                pb.StatusRequest(), timeout=timeout)

        async def call(ch: grpc.aio.Channel, t: float) -> pb.StatusResponse:
            st = await pb_grpc.ClusterStub(ch).Status(pb.StatusRequest(), timeout=t)
            if st.role != pb.ROLE_LEADER:
                if st.leader_id and st.leader_address:
                    self.leader = st.leader_address
                raise _Retry()
            return st
        return await self._retrying(call, timeout)

    async def _retrying(self, call: Callable[[grpc.aio.Channel, float], Awaitable[T]], timeout: float) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            address = self.leader or self._next_address()
            try:
                return await call(self._channel(address), min(self.attempt_timeout, deadline - loop.time()))
            except _Retry:
                await asyncio.sleep(0.02)
            except grpc.aio.AioRpcError:
                self.leader = None
                await asyncio.sleep(0.05)
        raise NoLeaderError(f"no leader found within {timeout:.1f}s")

    async def add_learner(self, member_id: str, address: str, *, timeout: float = 30.0) -> pb.MembershipResponse:
        req = pb.AddLearnerRequest(id=member_id, address=address)
        return await self._admin(lambda s, t: s.AddLearner(req, timeout=t), timeout)

    async def promote_learner(self, member_id: str, *, timeout: float = 30.0) -> pb.MembershipResponse:
        req = pb.PromoteLearnerRequest(id=member_id)
        return await self._admin(lambda s, t: s.PromoteLearner(req, timeout=t), timeout)

    async def remove_member(self, member_id: str, *, timeout: float = 30.0) -> pb.MembershipResponse:
        req = pb.RemoveMemberRequest(id=member_id)
        return await self._admin(lambda s, t: s.RemoveMember(req, timeout=t), timeout)

    async def transfer_leadership(self, target_id: str = "", *, timeout: float = 10.0) -> str:
        req = pb.TransferLeadershipRequest(target_id=target_id)
        r = await self._admin(lambda s, t: s.TransferLeadership(req, timeout=t), timeout)
        self.leader = None
        return r.leader_id

    async def snapshot(self, member: str, *, timeout: float = 30.0) -> pb.SnapshotResponse:
        stub = pb_grpc.ClusterStub(self._channel(self._address(member)))
        return await stub.Snapshot(pb.SnapshotRequest(), timeout=timeout)

    async def _admin(self, fn: Callable[[pb_grpc.ClusterStub, float], Awaitable[T]], timeout: float) -> T:
        async def call(ch: grpc.aio.Channel, t: float) -> T:
            return await fn(pb_grpc.ClusterStub(ch), t)
        saved = self.attempt_timeout
        self.attempt_timeout = timeout
        try:
            return await self._leader_call(call, write=False, timeout=timeout)
        finally:
            self.attempt_timeout = saved


class _Retry(Exception):
    pass


def _leader_hint(exc: grpc.aio.AioRpcError) -> tuple[str, str] | None:
    """(leader id, leader address) from ``faultlab-leader: id=host:port``, or None."""
    for key, value in exc.trailing_metadata() or ():
        if key == LEADER_METADATA:
            text = value.decode() if isinstance(value, bytes) else value
            leader_id, _, address = text.partition("=")
            return (leader_id, address) if address or leader_id else None
    return None


class SyncRaftClient:
    """Blocking wrapper: runs a :class:`RaftClient` on a private event loop thread."""

    def __init__(self, addresses: list[str] | dict[str, str], **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raft-client", daemon=True)
        self._thread.start()
        self.client: RaftClient = self._run(self._make(addresses, kwargs))

    @staticmethod
    async def _make(addresses: list[str] | dict[str, str], kwargs: dict[str, Any]) -> RaftClient:
        return RaftClient(addresses, **kwargs)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *a, **kw: self._run(method(*a, **kw))

    def close(self) -> None:
        self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncRaftClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
