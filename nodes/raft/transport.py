"""Peer transport: Raft messages to and from the other members over grpc.aio.

One channel per peer (``ctx.channel``, so the fault agent's interceptors apply)
and one send queue per peer drained by its own task: everything queued while a
``Peer.Send`` is in flight goes out in the next ``MessageBatch``, so the core
loop never waits on a peer and a slow peer only delays itself. Snapshots are
streamed through ``Peer.InstallSnapshot`` in chunks. Failures are reported back
to the core (``report_unreachable``/``report_snapshot``) through callbacks.

Every ``Send`` carries the sender's ``id=host:port`` in ``faultlab-from``
metadata, so a member that joined with no configuration can answer its leader.

Replies ride on the call that asked: a follower holds a ``Send`` carrying
appends or heartbeats until its loop has handled them (made them durable) and
returns its responses to that sender in ``faultlab-reply-bin`` trailing
metadata (a serialized ``MessageBatch``) instead of a ``Send`` of its own. That
saves one RPC per follower per batch; a sender that ignores the metadata still
works, and a reply that misses its call goes out through the queue as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from faultlab.nodes.raft.messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from faultlab.nodes.common.node import NodeContext

log = logging.getLogger("faultlab.raft.transport")

FROM_METADATA = "faultlab-from"
REPLY_METADATA = "faultlab-reply-bin"
# A sender's request that the reply to its Send not ride back on the call (faults watch that route).
NO_REPLY_METADATA = "faultlab-no-reply"
# How long a follower holds a Send for its own loop to produce the reply (then it acks
# plainly and the reply goes out through the queue).
REPLY_HOLD = 1.0
_REPLY_TYPES = frozenset({MsgType.APP_RESP, MsgType.HEARTBEAT_RESP})
_ASKS = frozenset({MsgType.APP, MsgType.HEARTBEAT})
SNAPSHOT_CHUNK = 1 << 20
MAX_BATCH_BYTES = 8 << 20
MAX_QUEUED = 20_000
SEND_TIMEOUT = 2.0
RECONNECT_AFTER = 1.0
# A commit-only append (no entries) waits this long for company: it usually rides
# with the next real append instead of costing an RPC (and a response) of its own.
LAZY_DELAY = 0.005

_ENVELOPE = struct.Struct("<I")


# ---------------------------------------------------------------- snapshot data envelope

def wrap_snapshot_data(addresses: dict[str, str], sm_data: bytes) -> bytes:
    """Snapshot data = member addresses + the state machine's bytes."""
    head = json.dumps(addresses, sort_keys=True).encode()
    return _ENVELOPE.pack(len(head)) + head + sm_data


def unwrap_snapshot_data(data: bytes) -> tuple[dict[str, str], bytes]:
    (n,) = _ENVELOPE.unpack_from(data, 0)
    return json.loads(data[4:4 + n]), data[4 + n:]


# ---------------------------------------------------------------- conversions

def entry_to_proto(e: Entry) -> pb.Entry:
    return pb.Entry(term=e.term, index=e.index, type=e.type, data=e.data)


def meta_to_proto(meta: SnapshotMeta, addresses: dict[str, str]) -> pb.SnapshotMeta:
    return pb.SnapshotMeta(index=meta.index, term=meta.term,
                           conf=pb.ConfState(voters=meta.conf.voters, learners=meta.conf.learners),
                           addresses=addresses)


def message_to_proto(m: Message) -> pb.RaftMessage:
    kw = {"from": m.frm}
    p = pb.RaftMessage(type=int(m.type), to=m.to, term=m.term, log_term=m.log_term, index=m.index,
                       commit=m.commit, reject=m.reject, reject_hint=m.reject_hint, context=m.context, **kw)
    if m.entries:
        pe = pb.Entry
        p.entries.extend([pe(term=e.term, index=e.index, type=e.type, data=e.data) for e in m.entries])
    return p


def message_from_proto(p: pb.RaftMessage, snapshot_data: bytes | None = None) -> Message:
    entries = [Entry(e.term, e.index, EntryType(e.type), e.data) for e in p.entries] if p.entries else []
    snap = None
    if p.HasField("snapshot") and snapshot_data is not None:
        s = p.snapshot
        snap = Snapshot(SnapshotMeta(s.index, s.term, ConfState(tuple(s.conf.voters), tuple(s.conf.learners))),
                        snapshot_data)
    return Message(MsgType(p.type), getattr(p, "from"), p.to, p.term, p.log_term, p.index, entries, p.commit,
                   p.reject, p.reject_hint, snap, p.context)


def merge_messages(prev: Message, m: Message) -> Message | None:
    """One message equivalent to ``prev`` then ``m`` (same peer), or None when they must stay apart.

    Contiguous appends of one term become one append (one follower step, one
    fsync, one response); successive successful append responses of one term
    collapse to the highest index. This is where per-proposal messages of the
    core turn into one message per peer per batch.
    """
    if prev.term != m.term or prev.type != m.type:
        return None
    if m.type == MsgType.APP:
        if prev.entries:
            last = prev.entries[-1]
            tail_index, tail_term = last.index, last.term
        else:
            tail_index, tail_term = prev.index, prev.log_term
        if m.index != tail_index or m.log_term != tail_term:
            return None
        if m.entries and prev.entries and _approx_size(prev) + _approx_size(m) > MAX_BATCH_BYTES:
            return None
        return Message(MsgType.APP, prev.frm, prev.to, prev.term, prev.log_term, prev.index,
                       prev.entries + m.entries if m.entries else prev.entries, max(prev.commit, m.commit))
    if m.type == MsgType.APP_RESP and not m.reject and not prev.reject and m.index >= prev.index:
        return m
    return None


def _lazy(queue: list[Message]) -> bool:
    return all(m.type == MsgType.APP and not m.entries for m in queue)


def _approx_size(m: Message) -> int:
    return 64 + sum(len(e.data) + 24 for e in m.entries)


# ---------------------------------------------------------------- links

class PeerLink:
    """The outgoing side towards one peer: its channel, queue and sender task."""

    def __init__(self, transport: Transport, peer_id: str) -> None:
        self.t = transport
        self.peer_id = peer_id
        self.queue: list[Message] = []
        self.wake = asyncio.Event()
        self.address = ""
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.PeerStub | None = None
        self.failing_since = 0.0
        self.channel_at = 0.0
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"raft-send-{peer_id}")
        self.snap_task: asyncio.Task[None] | None = None

    def _ensure_channel(self) -> pb_grpc.PeerStub | None:
        address = self.t.address_of(self.peer_id)
        if not address:
            return None
        now = asyncio.get_running_loop().time()
        stale = self.failing_since and now - self.channel_at > RECONNECT_AFTER
        if self.channel is None or address != self.address or stale:
            if self.channel is not None:
                old = self.channel
                asyncio.get_running_loop().create_task(old.close())
            self.address = address
            self.channel = self.t.ctx.channel(self.peer_id, address)
            self.stub = pb_grpc.PeerStub(self.channel)
            self.channel_at = now
        return self.stub

    def enqueue(self, m: Message) -> None:
        if m.type == MsgType.SNAP:
            if self.snap_task is None or self.snap_task.done():
                self.snap_task = asyncio.get_running_loop().create_task(self._send_snapshot(m))
            return
        queue = self.queue
        if queue:
            merged = merge_messages(queue[-1], m)
            if merged is not None:
                queue[-1] = merged
                self.wake.set()
                return
            if len(queue) >= MAX_QUEUED:
                self.t.on_unreachable(self.peer_id)
                return
        queue.append(m)
        self.wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.queue:
                continue
            if _lazy(self.queue):
                await self._linger(loop.time() + LAZY_DELAY)
            stub = self._ensure_channel()
            if stub is None:
                dropped, self.queue = self.queue, []
                log.debug("no address for %s: dropped %d messages", self.peer_id, len(dropped))
                self.t.on_unreachable(self.peer_id)
                continue
            cut, size = 0, 0
            queue = self.queue
            while cut < len(queue) and (cut == 0 or size < MAX_BATCH_BYTES):
                size += _approx_size(queue[cut])
                cut += 1
            batch = [message_to_proto(m) for m in queue[:cut]]
            self.queue = queue[cut:]
            if self.queue:
                self.wake.set()
            try:
                # Faults on what this member receives from the peer must see its replies: ask for
                # them as Sends of the peer's own instead of riding back on this call.
                metadata = self.t.metadata_no_reply if self.t.ctx.inbound_faulted(self.peer_id) else self.t.metadata
                call = stub.Send(pb.MessageBatch(messages=batch), timeout=SEND_TIMEOUT, metadata=metadata)
                await call
                self.failing_since = 0.0
                for key, value in await call.trailing_metadata() or ():
                    if key == REPLY_METADATA and isinstance(value, bytes) and self.t.on_messages is not None:
                        reply = pb.MessageBatch.FromString(value)
                        self.t.on_messages([message_from_proto(m) for m in reply.messages])
            except (TimeoutError, grpc.aio.AioRpcError) as exc:
                if not self.failing_since:
                    self.failing_since = loop.time()
                    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else "timeout"
                    log.info("peer %s unreachable (%s)", self.peer_id, code)
                self.t.on_unreachable(self.peer_id)
                self.queue = [m for m in self.queue if m.type not in (MsgType.HEARTBEAT, MsgType.APP)]
                await asyncio.sleep(0.02)

    async def _linger(self, deadline: float) -> None:
        """Waits until a message worth sending arrives or ``deadline`` passes."""
        loop = asyncio.get_running_loop()
        while _lazy(self.queue):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), remaining)
            except TimeoutError:
                return

    async def _send_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        snap = m.snapshot
        ok = False
        try:
            stub = self._ensure_channel()
            if stub is None:
                return
            addresses, _ = unwrap_snapshot_data(snap.data)
            first = message_to_proto(m)
            first.snapshot.CopyFrom(meta_to_proto(snap.meta, addresses))
            data = snap.data

            async def chunks():  # type: ignore[no-untyped-def]
                off = 0
                while True:
                    piece = data[off:off + SNAPSHOT_CHUNK]
                    last = off + len(piece) >= len(data)
                    yield pb.SnapshotChunk(message=first if off == 0 else None, offset=off, data=piece, last=last)
                    off += len(piece)
                    if last:
                        return

            timeout = 30.0 + len(data) / (8 << 20)
            await stub.InstallSnapshot(chunks(), timeout=timeout, metadata=self.t.metadata)
            ok = True
            log.info("sent snapshot %d (%d bytes) to %s", snap.meta.index, len(data), self.peer_id)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            log.warning("snapshot to %s failed: %s", self.peer_id, exc)
        finally:
            self.t.on_snapshot_status(self.peer_id, ok)

    async def close(self) -> None:
        self.task.cancel()
        if self.snap_task is not None:
            self.snap_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.channel is not None:
            await self.channel.close()


class Transport:
    """Sends the core's messages; receiving is the Peer servicer's job (service.py)."""

    def __init__(self, ctx: NodeContext, node_id: str, advertise: str, addresses: dict[str, str],
                 on_unreachable: Callable[[str], None], on_snapshot_status: Callable[[str, bool], None]) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.addresses = addresses
        self.on_unreachable = on_unreachable
        self.on_snapshot_status = on_snapshot_status
        self.metadata = ((FROM_METADATA, f"{node_id}={advertise}"),)
        self.metadata_no_reply = (*self.metadata, (NO_REPLY_METADATA, "1"))
        self.links: dict[str, PeerLink] = {}
        # Replies carried back on a held Send: the node steps them (set by the node).
        self.on_messages: Callable[[list[Message]], None] | None = None
        # peer -> the held Send waiting for this member's reply to it.
        self._held: dict[str, asyncio.Future[list[Message]]] = {}

    def address_of(self, peer_id: str) -> str:
        return self.addresses.get(peer_id, "")

    def send(self, messages: list[Message]) -> None:
        links = self.links
        held = self._held
        if held:
            rest: list[Message] = []
            replies: dict[str, list[Message]] = {}
            for m in messages:
                fut = held.get(m.to)
                if fut is not None and m.type in _REPLY_TYPES and not fut.done():
                    replies.setdefault(m.to, []).append(m)
                else:
                    rest.append(m)
            for peer, ms in replies.items():
                if self.ctx.outbound_faulted(peer):
                    # A fault shapes what this member sends to `peer` (a one-way partition, a
                    # delay per hop): the reply goes as this member's own Send, through it.
                    held.pop(peer).set_result([])
                    rest.extend(ms)
                else:
                    held.pop(peer).set_result(ms)
            messages = rest
        for m in messages:
            link = links.get(m.to)
            if link is None:
                link = links[m.to] = PeerLink(self, m.to)
            link.enqueue(m)

    def wants_reply(self, messages: list[Message], metadata: tuple[tuple[str, str | bytes], ...] | None = None
                    ) -> str:
        """The sender to hold this batch's call for (its reply rides back), or ''.

        Not while a fault shapes this member's traffic to the sender (outbound here) or the
        sender's from it (the sender asks with ``faultlab-no-reply``): the reply then goes as a
        Send of this member's, which those faults see.
        """
        if not messages:
            return ""
        peer = messages[0].frm
        if peer in self._held or not any(m.type in _ASKS for m in messages) or self.ctx.outbound_faulted(peer):
            return ""
        if metadata and any(key == NO_REPLY_METADATA for key, _ in metadata):
            return ""
        return peer

    async def hold(self, peer: str) -> bytes | None:
        """Waits for this member's next reply to ``peer`` (its loop handles what was stepped)."""
        fut: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        self._held[peer] = fut
        try:
            messages = await asyncio.wait_for(fut, REPLY_HOLD)
        except TimeoutError:
            messages = []
        finally:
            if self._held.get(peer) is fut:
                del self._held[peer]
        if not messages:
            return None
        return pb.MessageBatch(messages=[message_to_proto(m) for m in messages]).SerializeToString()

    def release_held(self) -> None:
        """The loop has nothing left to do: calls still held get a plain ack."""
        if self._held:
            held, self._held = self._held, {}
            for fut in held.values():
                if not fut.done():
                    fut.set_result([])

    def learn_address(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> None:
        for key, value in metadata or ():
            if key == FROM_METADATA:
                peer, _, address = (value.decode() if isinstance(value, bytes) else value).partition("=")
                if peer and address and self.addresses.get(peer) != address:
                    self.addresses[peer] = address

    async def close(self) -> None:
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()
