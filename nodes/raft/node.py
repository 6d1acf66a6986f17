"""The Raft node shell: `faultlab-node raft ...` drives the pure core with real I/O.

One asyncio task (the loop) takes the core's Ready batches in order: persist
(a leader writes WAL + fsync in a thread, so the event loop keeps taking
proposals, which land in the next Ready: group commit; a follower writes on the
loop), send (a leader's appends go out while it fsyncs; every acknowledgement,
vote and response only after), apply to the state machine, answer the waiting
proposals and reads, advance. A ticker task advances the core's logical
clock from ``ctx.clock``. gRPC handlers call the core directly (everything runs
on the one event loop) and wait on futures the loop resolves.

Answers: a proposal is acknowledged once applied. Its entry overwritten by
another term, or leadership lost while it is in flight: UNAVAILABLE (outcome
unknown; retry with the same session). Not proposed because this member does not
lead: FAILED_PRECONDITION with ``faultlab-leader: id=host:port`` trailing metadata
(UNAVAILABLE while no leader is known). Linearizable reads go through ReadIndex.

``--unsafe-local-reads`` (FAULTLAB_UNSAFE_LOCAL_READS) is a TEST-ONLY switch that
makes a member that believes it leads serve linearizable reads from local state
without ReadIndex. It is unsafe (a deposed leader serves stale reads) and exists
so chaos tests can show the linearizability checker catching exactly that.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faultlab.nodes.common.deadlines import Deadlines
from faultlab.nodes.common.node import NodeContext, env_default
from faultlab.nodes.raft.core import (
    ConfChangePending,
    Config,
    NotLeader,
    ProposalDropped,
    RaftCore,
    Status,
)
from faultlab.nodes.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    Snapshot,
)
from faultlab.nodes.raft.metrics import RaftMetrics
from faultlab.nodes.raft.statemachine import KVStateMachine, StateMachine
from faultlab.nodes.raft.storage import CorruptionError, RaftStorage
from faultlab.nodes.raft.transport import Transport, unwrap_snapshot_data, wrap_snapshot_data

log = logging.getLogger("faultlab.raft.node")

# A leader may send its appends while it writes the same entries to its own disk
# (Raft thesis, 10.2.1): they acknowledge nothing and grant nothing. The leader
# answers a client only from a later Ready, after its own fsync of the entry.
_EARLY = frozenset({MsgType.APP, MsgType.HEARTBEAT})
DEFAULT_MAX_VALUE = 1 << 20


# ---------------------------------------------------------------- errors (mapped to gRPC codes by service.py)

class RaftNodeError(Exception):
    code = "UNAVAILABLE"


class Unavailable(RaftNodeError):
    code = "UNAVAILABLE"


class NotLeaderError(RaftNodeError):
    """Not proposed: this member does not lead. Carries the leader hint (may be empty)."""

    code = "FAILED_PRECONDITION"

    def __init__(self, node_id: str, leader_id: str, leader_address: str) -> None:
        hint = f"the leader is {leader_id} at {leader_address}" if leader_id else "no leader is known"
        super().__init__(f"member {node_id} is not the leader: {hint}")
        self.leader_id = leader_id
        self.leader_address = leader_address


class InvalidArgument(RaftNodeError):
    code = "INVALID_ARGUMENT"


class FailedPrecondition(RaftNodeError):
    code = "FAILED_PRECONDITION"


class DeadlineExceeded(RaftNodeError):
    code = "DEADLINE_EXCEEDED"


# ---------------------------------------------------------------- options

@dataclass
class RaftOptions:
    tick_ms: int = 20
    election_ticks: int = 50
    heartbeat_ticks: int = 5
    snapshot_threshold: int = 10_000
    max_value_bytes: int = DEFAULT_MAX_VALUE
    segment_bytes: int = 64 << 20
    unsafe_local_reads: bool = False
    join: bool = False
    fsync: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RaftOptions:
        def flag(name: str) -> bool:
            v = options.get(name, False)
            return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")

        return cls(
            tick_ms=int(options.get("tick_ms") or 20),
            election_ticks=int(options.get("election_ticks") or 50),
            heartbeat_ticks=int(options.get("heartbeat_ticks") or 5),
            snapshot_threshold=int(options.get("snapshot_threshold") or 10_000),
            max_value_bytes=int(options.get("max_value_bytes") or DEFAULT_MAX_VALUE),
            segment_bytes=int(options.get("segment_bytes") or (64 << 20)),
            unsafe_local_reads=flag("unsafe_local_reads"),
            join=flag("join"),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--tick-ms", type=int, default=int(env_default("tick_ms", "20")),
      help="logical clock tick in ms (FAULTLAB_TICK_MS)")
    a("--election-ticks", type=int, default=int(env_default("election_ticks", "50")),
      help="election timeout in ticks (FAULTLAB_ELECTION_TICKS)")
    a("--heartbeat-ticks", type=int, default=int(env_default("heartbeat_ticks", "5")),
      help="heartbeat interval in ticks (FAULTLAB_HEARTBEAT_TICKS)")
    a("--snapshot-threshold", type=int, default=int(env_default("snapshot_threshold", "10000")),
      help="take a snapshot after this many applied entries (FAULTLAB_SNAPSHOT_THRESHOLD)")
    a("--max-value-bytes", type=int, default=int(env_default("max_value_bytes", str(DEFAULT_MAX_VALUE))),
      help="largest value accepted by Put/CompareAndSwap (FAULTLAB_MAX_VALUE_BYTES)")
    a("--segment-bytes", type=int, default=int(env_default("segment_bytes", str(64 << 20))),
      help="WAL segment size before rotation (FAULTLAB_SEGMENT_BYTES)")
    a("--join", action="store_true", default=env_default("join").lower() in ("1", "true", "yes"),
      help="start with no configuration and wait to be added by the leader (FAULTLAB_JOIN)")
    a("--unsafe-local-reads", action="store_true",
      default=env_default("unsafe_local_reads").lower() in ("1", "true", "yes"),
      help="TEST ONLY, UNSAFE: serve linearizable reads locally on a member that believes it leads, "
           "without ReadIndex (FAULTLAB_UNSAFE_LOCAL_READS)")


# ---------------------------------------------------------------- the node

class RaftNode:
    """A Raft member: the core, its storage, transport and state machine."""

    def __init__(self, ctx: NodeContext, sm: StateMachine, opts: RaftOptions) -> None:
        self.ctx = ctx
        self.id = ctx.node_id
        self.sm = sm
        self.opts = opts
        self.metrics = RaftMetrics(self.id)
        self.storage = RaftStorage(ctx.data_dir, segment_bytes=opts.segment_bytes, fsync=opts.fsync,
                                   on_fsync=self.metrics.fsync.observe)
        self.addresses: dict[str, str] = {}
        self.core: RaftCore | None = None
        self.transport: Transport | None = None
        self.applied = 0
        self.applied_term = 0
        self.snapshot_index = 0
        self.leader_id = ""
        self.role = Role.FOLLOWER
        self.term = 0
        self.disk_error = ""
        self._waiters: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._deadlines = Deadlines()
        self._reads_new: list[asyncio.Future[int]] = []
        self._reads_issued: dict[bytes, list[asyncio.Future[int]]] = {}
        self._reads_waiting: list[tuple[int, list[asyncio.Future[int]]]] = []
        self._read_seq = 0
        self._state_waiters: list[asyncio.Future[None]] = []
        self._deliveries: list[tuple[asyncio.Future[Any], Any]] = []
        self._wake = asyncio.Event()
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Recovers durable state (raises CorruptionError) and builds the core."""
        loaded = self.storage.load()
        boot = loaded.bootstrap or {}
        self.addresses.update(boot.get("addresses", {}) or {})  # type: ignore[arg-type]
        self.addresses.update(self.ctx.peers)
        self.addresses[self.id] = self.ctx.advertise
        if loaded.bootstrap is None:
            self.storage.write_bootstrap({"addresses": dict(self.addresses), "join": self.opts.join})
        fresh = loaded.snapshot is None and not loaded.entries and loaded.hard_state.term == 0
        peers = None
        if fresh and not self.opts.join:
            if self.id not in self.ctx.peers:
                raise CorruptionError(f"--peers {','.join(self.ctx.peers)} does not include this member "
                                      f"{self.id}; pass the whole initial cluster or --join")
            peers = ConfState(tuple(sorted(self.ctx.peers)))
        if loaded.snapshot is not None:
            addrs, sm_data = unwrap_snapshot_data(loaded.snapshot.data)
            self._merge_addresses(addrs)
            self.sm.restore(sm_data)
            self.applied = self.snapshot_index = loaded.snapshot.meta.index
            self.applied_term = loaded.snapshot.meta.term
        cfg = Config(id=self.id, election_tick=self.opts.election_ticks, heartbeat_tick=self.opts.heartbeat_ticks)
        self.core = RaftCore(cfg, peers=peers, hard_state=loaded.hard_state if not fresh else None,
                             snapshot=loaded.snapshot, entries=loaded.entries, applied=self.applied)
        self.transport = Transport(self.ctx, self.id, self.ctx.advertise, self.addresses,
                                   self._on_unreachable, self._on_snapshot_status)
        self.transport.on_messages = self.step
        if loaded.torn_tail:
            log.warning("recovered: %s", loaded.torn_tail)
        log.info("member %s recovered: term %d, %d entries after snapshot %d, members %s", self.id,
                 loaded.hard_state.term, len(loaded.entries), self.snapshot_index, self.core.status().conf)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.transport is None:
            raise RuntimeError("open() first")
        self._tasks = [loop.create_task(self._run(), name="raft-loop"),
                       loop.create_task(self._ticker(), name="raft-ticker")]

    async def stop(self) -> None:
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self.transport is not None:
            await self.transport.close()
        self._fail_all(Unavailable(f"member {self.id} is shutting down"))

    # ------------------------------------------------------------------ callbacks from transport / peers

    def _on_unreachable(self, peer: str) -> None:
        if self.core is not None:
            self.core.report_unreachable(peer)
            self._wake.set()

    def _on_snapshot_status(self, peer: str, ok: bool) -> None:
        if self.core is not None:
            self.core.report_snapshot(peer, ok)
            self._wake.set()

    def step(self, messages: list[Message]) -> None:
        core = self.core
        assert core is not None
        for m in messages:
            try:
                core.step(m)
            except Exception:
                log.exception("step %s from %s failed", m.type.name, m.frm)
        self._wake.set()

    # ------------------------------------------------------------------ tick + loop

    async def _ticker(self) -> None:
        clock = self.ctx.clock
        tick = self.opts.tick_ms / 1000.0
        core = self.core
        assert core is not None
        last = clock.monotonic()
        while True:
            await asyncio.sleep(tick / max(clock.rate(), 0.01))
            now = clock.monotonic()
            n = int((now - last) / tick)
            if n <= 0:
                continue
            last += n * tick
            for _ in range(min(n, self.opts.election_ticks)):
                core.tick()
            self._wake.set()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except BaseException:
            # Fail-stop: a member whose loop broke must not keep answering as if it worked.
            log.critical("raft loop of %s failed; exiting", self.id, exc_info=True)
            print(f"faultlab-node raft {self.id}: internal error in the raft loop; exiting (see log)",
                  file=sys.stderr, flush=True)
            os._exit(70)

    async def _loop(self) -> None:
        core = self.core
        assert core is not None
        while True:
            self._wake.clear()
            self._issue_reads()
            if core.has_ready():
                rd = core.ready()
                try:
                    await self._handle_ready(rd)
                finally:
                    core.advance(rd)
                self._notify_state()
                if self.applied - self.snapshot_index >= self.opts.snapshot_threshold:
                    await self._take_snapshot()
                continue
            if self.transport is not None:
                self.transport.release_held()
            await self._wake.wait()

    async def _handle_ready(self, rd: Ready) -> None:
        core = self.core
        assert core is not None and self.transport is not None
        hs = rd.hard_state
        messages = rd.messages
        committed = rd.committed_entries
        if rd.entries or rd.snapshot is not None or hs is not None:
            if committed and rd.snapshot is None:
                # Entries persisted by earlier Readys are durable here already: apply them (and
                # answer their clients) while this Ready's new entries are being written.
                first_new = rd.entries[0].index if rd.entries else committed[-1].index + 1
                cut = 0
                while cut < len(committed) and committed[cut].index < first_new:
                    cut += 1
                if cut:
                    self._apply(committed[:cut])
                    committed = committed[cut:]
                    self._serve_reads(rd.read_states)
                    self._deliver()
            st = self.storage
            durable = (rd.entries or rd.snapshot is not None or
                       (hs is not None and (hs.term != st.hard_state.term or hs.vote != st.hard_state.vote)))
            if durable and messages and rd.role == Role.LEADER and rd.snapshot is None:
                early = [m for m in messages if m.type in _EARLY]
                if early:
                    messages = [m for m in messages if m.type not in _EARLY]
                    self.transport.send(early)
            await self._persist(rd, bool(durable))
            if rd.entries:
                self.metrics.ready_entries.observe(len(rd.entries))
        if messages:
            self.transport.send(messages)
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot)
        if committed:
            self._apply(committed)
        if rd.read_states or self._reads_waiting:
            self._serve_reads(rd.read_states)
        if self._deliveries:
            self._deliver()
        for ctx in rd.dropped_reads:
            for fut in self._reads_issued.pop(ctx, ()):
                if not fut.done():
                    fut.set_exception(Unavailable(f"member {self.id} lost leadership before confirming the read"))
        self._soft_state(rd)

    async def _persist(self, rd: Ready, durable: bool) -> None:
        first_failure = True
        while True:
            try:
                if durable and (rd.role == Role.LEADER or rd.snapshot is not None):
                    await asyncio.to_thread(self.storage.save, rd.hard_state, rd.entries, rd.snapshot, True)
                elif durable:
                    # A follower has nothing to overlap with its fsync (its reply waits for it and
                    # the leader's next append waits for the reply): writing on the loop saves
                    # two thread hand-offs per batch.
                    self.storage.save(rd.hard_state, rd.entries, rd.snapshot, True)
                else:
                    self.storage.save(rd.hard_state, rd.entries, rd.snapshot, False)
                if self.disk_error:
                    log.warning("storage writable again; persisted the pending batch")
                self.disk_error = ""
                return
            except OSError as exc:
                self.disk_error = f"member {self.id} cannot write its log: {exc}"
                if first_failure:
                    log.error("%s; writes are not acknowledged until it can (retrying)", self.disk_error)
                    first_failure = False
                await asyncio.sleep(0.1)

    def _install_snapshot(self, snap: Snapshot) -> None:
        addrs, sm_data = unwrap_snapshot_data(snap.data)
        self._merge_addresses(addrs)
        self.sm.restore(sm_data)
        self.applied = self.snapshot_index = snap.meta.index
        self.applied_term = snap.meta.term
        self.metrics.snapshots.inc()
        for index in [i for i in self._waiters if i <= snap.meta.index]:
            _term, fut = self._waiters.pop(index)
            if not fut.done():
                fut.set_exception(Unavailable(f"entry {index} was replaced by a snapshot; outcome unknown"))
        log.info("installed snapshot %d (term %d, %d bytes)", snap.meta.index, snap.meta.term, len(snap.data))

    def _apply(self, entries: list[Entry]) -> None:
        waiters = self._waiters
        apply = self.sm.apply
        normal = EntryType.NORMAL
        for e in entries:
            if e.index <= self.applied:
                continue
            result: Any = None
            if e.type == normal:
                if e.data:
                    result = apply(e.index, e.data)
            else:
                try:
                    cc = ConfChange.decode(e.data)
                    if cc.address:
                        self.addresses[cc.node_id] = cc.address
                    result = cc
                except ValueError as exc:
                    log.error("bad conf change at %d: %s", e.index, exc)
            self.applied = e.index
            self.applied_term = e.term
            if waiters:
                w = waiters.pop(e.index, None)
                if w is not None:
                    term, fut = w
                    if fut.done():
                        continue
                    if term == e.term:
                        self._deliveries.append((fut, (result, e.index)))
                    else:
                        fut.set_exception(Unavailable(
                            f"entry {e.index} was overwritten by term {e.term} (proposed in term {term}); "
                            f"outcome unknown, retry"))
                        self.metrics.proposals_failed.inc()

    def _deliver(self) -> None:
        """Answers every applied proposal in one pass, so a Pipeline stream answers a commit in one message.

        Pacing them a few per loop turn split those answers over many messages and cost 20-30%
        more CPU per pipelined write, with unary calls no faster (``bench/raft/cpu_per_write.py``).
        """
        deliveries, self._deliveries = self._deliveries, []
        ok = self.metrics.proposals_ok
        for fut, value in deliveries:
            if not fut.done():
                fut.set_result(value)
                ok.inc()

    def _serve_reads(self, read_states: list[ReadState]) -> None:
        for rs in read_states:
            futs = self._reads_issued.pop(rs.context, None)
            if futs:
                self._reads_waiting.append((rs.index, futs))
        if not self._reads_waiting:
            return
        keep = []
        for index, futs in self._reads_waiting:
            if index <= self.applied:
                for fut in futs:
                    if not fut.done():
                        fut.set_result(index)
                        self.metrics.reads.inc()
            else:
                keep.append((index, futs))
        self._reads_waiting = keep

    def _soft_state(self, rd: Ready) -> None:
        lost = self.role == Role.LEADER and (rd.role != Role.LEADER or rd.term != self.term)
        if rd.leader_id != self.leader_id:
            self.metrics.leader_changes.inc()
            if rd.leader_id:
                log.info("leader is now %s (term %d)", rd.leader_id, rd.term)
        self.leader_id, self.role, self.term = rd.leader_id, rd.role, rd.term
        m = self.metrics
        m.term.set(rd.term)
        m.role.set(self.role_enum())
        m.is_leader.set(1 if rd.role == Role.LEADER else 0)
        commit = self.core.log.committed if self.core is not None else 0
        m.commit.set(commit)
        m.applied.set(self.applied)
        m.apply_lag.set(max(0, commit - self.applied))
        if lost:
            log.info("lost leadership (term %d, leader now %r)", rd.term, rd.leader_id)
            self._fail_all(Unavailable(f"member {self.id} lost leadership while the request was in flight; "
                                       f"outcome unknown, retry"), reads=True)

    def _fail_all(self, exc: Exception, reads: bool = True) -> None:
        waiters, self._waiters = self._waiters, {}
        for _term, fut in waiters.values():
            if not fut.done():
                fut.set_exception(exc)
                self.metrics.proposals_failed.inc()
        if reads:
            pending = [*self._reads_new, *(f for fs in self._reads_issued.values() for f in fs),
                       *(f for _, fs in self._reads_waiting for f in fs)]
            self._reads_new, self._reads_issued, self._reads_waiting = [], {}, []
            for fut in pending:
                if not fut.done():
                    fut.set_exception(exc)

    async def _take_snapshot(self) -> Snapshot | None:
        core = self.core
        assert core is not None
        index = self.applied
        if index <= self.snapshot_index:
            return None
        meta = core.snapshot_meta(index)
        snap = Snapshot(meta, wrap_snapshot_data(dict(self.addresses), self.sm.snapshot()))
        try:
            await asyncio.to_thread(self.storage.save_snapshot, snap)
        except OSError as exc:
            log.error("snapshot at %d not written: %s", index, exc)
            return None
        core.compact(snap)
        self.snapshot_index = index
        self.metrics.snapshots.inc()
        log.info("snapshot at index %d (%d bytes); log compacted", index, len(snap.data))
        return snap

    def _merge_addresses(self, addrs: dict[str, str]) -> None:
        for k, v in addrs.items():
            if k != self.id and v:
                self.addresses.setdefault(k, v)

    def _notify_state(self) -> None:
        if self._state_waiters:
            waiters, self._state_waiters = self._state_waiters, []
            for f in waiters:
                if not f.done():
                    f.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Waits for ``predicate`` to hold (checked after every Ready and tick)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(f"{what} did not happen within {timeout:.1f}s")
            fut: asyncio.Future[None] = loop.create_future()
            self._state_waiters.append(fut)
            try:
                await asyncio.wait_for(fut, min(remaining, self.opts.tick_ms / 1000.0 * 2))
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ client-facing operations

    def leader_address(self) -> str:
        return self.addresses.get(self.leader_id, "") if self.leader_id else ""

    def _not_leader(self, leader_id: str | None = None) -> RaftNodeError:
        lead = self.leader_id if leader_id is None else leader_id
        if lead == self.id:
            return Unavailable(f"member {self.id} is not leading right now; retry")
        address = self.addresses.get(lead, "") if lead else ""
        if not lead or not address:
            return Unavailable(f"member {self.id} is not the leader and no leader is known; retry later")
        return NotLeaderError(self.id, lead, address)

    async def propose(self, data: bytes, timeout: float | None = None) -> tuple[Any, int]:
        """Replicates ``data`` and returns (state machine result, log index) once applied."""
        return await self.propose_future(data, timeout)

    def propose_future(self, data: bytes, timeout: float | None = None) -> asyncio.Future[tuple[Any, int]]:
        """Proposes ``data`` now; the future resolves like :meth:`propose` (raises at once if not proposed).

        For callers that answer from a callback (KV.Pipeline) instead of awaiting in a task.
        """
        core = self.core
        assert core is not None
        if self.disk_error:
            raise Unavailable(self.disk_error)
        try:
            index, term = core.propose(data)
        except NotLeader as exc:
            raise self._not_leader(exc.leader_id) from None
        except ProposalDropped as exc:
            raise Unavailable(str(exc)) from None
        fut: asyncio.Future[Any] = self._running_loop().create_future()
        self._waiters[index] = (term, fut)
        self._wake.set()
        self._expire_after(fut, timeout, f"entry {index}")
        return fut

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._event_loop
        if loop is None:
            loop = self._event_loop = asyncio.get_running_loop()
        return loop

    def _expire_after(self, fut: asyncio.Future[Any], timeout: float | None, what: str) -> None:
        """Fails ``fut`` with DEADLINE_EXCEEDED after ``timeout`` unless it is resolved first."""
        if timeout is not None:
            self._deadlines.add(fut, timeout, self._expire, what)

    def _expire(self, fut: asyncio.Future[Any], what: str) -> None:
        if not fut.done():
            fut.set_exception(DeadlineExceeded(f"{what} did not complete in time on {self.id}; outcome unknown"))

    async def read_barrier(self, timeout: float | None = None) -> int:
        """Linearizable read point: returns once applied >= a confirmed ReadIndex."""
        return await self.read_barrier_future(timeout)

    def read_barrier_future(self, timeout: float | None = None) -> asyncio.Future[int]:
        """:meth:`read_barrier` as a future (raises at once when this member does not lead)."""
        core = self.core
        assert core is not None
        fut: asyncio.Future[int] = self._running_loop().create_future()
        if self.opts.unsafe_local_reads and core.role == Role.LEADER:
            fut.set_result(self.applied)
            return fut
        if core.role != Role.LEADER:
            raise self._not_leader()
        self._reads_new.append(fut)
        self._wake.set()
        self._expire_after(fut, timeout, "read index")
        return fut

    def _issue_reads(self) -> None:
        if not self._reads_new:
            return
        futs, self._reads_new = self._reads_new, []
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "little")
        try:
            assert self.core is not None
            self.core.read_index(ctx)
        except NotLeader as exc:
            err = self._not_leader(exc.leader_id)
            for f in futs:
                if not f.done():
                    f.set_exception(err)
            return
        self._reads_issued[ctx] = futs

    def status(self) -> Status:
        assert self.core is not None
        return self.core.status()

    def role_enum(self) -> int:
        """The wire Role (ROLE_* values of raft.proto)."""
        assert self.core is not None
        role = self.core.role
        if role == Role.LEADER:
            return 4
        if role == Role.CANDIDATE:
            return 3
        if role == Role.PRE_CANDIDATE:
            return 2
        return 5 if self.id in self.core.learners else 1

    def _conf_error(self, exc: Exception) -> RaftNodeError:
        if isinstance(exc, NotLeader):
            return self._not_leader(exc.leader_id)
        if isinstance(exc, ConfChangePending | ProposalDropped):
            return Unavailable(str(exc))
        return FailedPrecondition(str(exc))

    async def change_membership(self, cc: ConfChange, timeout: float) -> int:
        core = self.core
        assert core is not None
        if self.disk_error:
            raise Unavailable(self.disk_error)
        if cc.address:
            self.addresses.setdefault(cc.node_id, cc.address)
        try:
            index, term = core.propose_conf_change(cc)
        except (NotLeader, ProposalDropped, ValueError) as exc:
            raise self._conf_error(exc) from None
        fut: asyncio.Future[Any] = self._running_loop().create_future()
        self._waiters[index] = (term, fut)
        self._wake.set()
        self._expire_after(fut, timeout, f"membership change {cc.type.name} {cc.node_id}")
        await fut
        if cc.type == ConfChangeType.ADD_LEARNER and cc.address:
            self.addresses[cc.node_id] = cc.address
        return index

    def members(self) -> list[tuple[str, str, bool, int, int]]:
        st = self.status()
        out = []
        for mid in (*st.conf.voters, *st.conf.learners):
            pr = st.progress.get(mid)
            out.append((mid, self.addresses.get(mid, ""), mid in st.conf.voters,
                        pr.match if pr else 0, pr.next if pr else 0))
        return out

    def require_leader(self) -> None:
        assert self.core is not None
        if self.core.role != Role.LEADER:
            raise self._not_leader()

    async def promote_learner(self, node_id: str, timeout: float) -> int:
        self.require_leader()
        st = self.status()
        if node_id not in st.conf.voters and node_id not in st.conf.learners:
            raise InvalidArgument(f"id: no member {node_id!r}")
        if node_id in st.conf.learners:
            def caught_up() -> bool:
                s = self.status()
                pr = s.progress.get(node_id)
                return s.role != Role.LEADER or (pr is not None and pr.match >= s.commit)
            try:
                await self.wait_until(caught_up, timeout, f"learner {node_id} catching up")
            except DeadlineExceeded:
                s = self.status()
                pr = s.progress.get(node_id)
                match = pr.match if pr else 0
                raise FailedPrecondition(
                    f"learner {node_id} has not caught up: it has entries up to {match}, the leader has "
                    f"committed {s.commit}; retry PromoteLearner once it has caught up "
                    f"(check Status members[].match_index)") from None
            self.require_leader()
        return await self.change_membership(ConfChange(ConfChangeType.PROMOTE_LEARNER, node_id), timeout)

    async def remove_member(self, node_id: str, timeout: float) -> int:
        self.require_leader()
        st = self.status()
        if node_id not in st.conf.voters and node_id not in st.conf.learners:
            raise InvalidArgument(f"id: no member {node_id!r}")
        if node_id == self.id:
            others = [v for v in st.conf.voters if v != self.id]
            if not others:
                raise FailedPrecondition(f"cannot remove {node_id}: it is the only voter")
            new = await self.transfer_leadership("", timeout)
            raise self._not_leader(new)
        index = await self.change_membership(ConfChange(ConfChangeType.REMOVE_MEMBER, node_id), timeout)
        link = self.transport.links.pop(node_id, None) if self.transport else None
        if link is not None:
            asyncio.get_running_loop().create_task(link.close())
        return index

    async def transfer_leadership(self, target: str, timeout: float) -> str:
        core = self.core
        assert core is not None
        self.require_leader()
        st = core.status()
        if not target:
            candidates = [(pr.match, v) for v, pr in st.progress.items() if v != self.id and v in st.conf.voters]
            if not candidates:
                raise FailedPrecondition(f"no other voter to transfer leadership to (voters {st.conf.voters})")
            target = max(candidates)[1]
        elif target not in st.conf.voters:
            raise InvalidArgument(f"target_id: {target!r} is not a voter (voters: {', '.join(st.conf.voters)})")
        if target == self.id:
            return self.id
        try:
            core.transfer_leadership(target)
        except NotLeader as exc:
            raise self._not_leader(exc.leader_id) from None
        except ValueError as exc:
            raise InvalidArgument(f"target_id: {exc}") from None
        self._wake.set()
        try:
            await self.wait_until(lambda: (core.lead == target and core.role != Role.LEADER) or
                                  (core.role == Role.LEADER and not core.lead_transferee),
                                  timeout, f"leadership transfer to {target}")
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(str(exc)) from None
        if core.role == Role.LEADER:
            raise Unavailable(f"leadership transfer to {target} was aborted (target did not catch up in an "
                              f"election timeout); {self.id} still leads, retry")
        return target

    async def snapshot_now(self) -> Snapshot | None:
        snap = await self._take_snapshot()
        if snap is None:
            return self.storage.latest_snapshot()
        return snap


# ---------------------------------------------------------------- serve

async def serve(ctx: NodeContext, sm: StateMachine | None = None) -> None:
    """Runs a Raft KV member until SIGTERM/SIGINT (``sm`` lets other kinds reuse the shell)."""
    from faultlab.nodes.raft.service import add_services

    opts = RaftOptions.from_options(ctx.options)
    state_machine: StateMachine = sm if sm is not None else KVStateMachine()
    node = RaftNode(ctx, state_machine, opts)
    try:
        node.open()
    except CorruptionError as exc:
        print(f"faultlab-node raft {ctx.node_id}: refusing to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except ValueError as exc:
        print(f"faultlab-node raft {ctx.node_id}: bad configuration: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    agent = None
    try:
        from faultlab.nodes import agent as agent_mod

        if hasattr(agent_mod, "attach_agent"):
            agent = agent_mod.attach_agent(ctx)
    except ImportError:
        agent = None
    server = ctx.create_server()
    add_services(server, ctx, node, state_machine)
    if agent is not None:
        agent.add_to_server(ctx.agent_host())
    await ctx.start()
    await node.start()
    try:
        await ctx.wait_stopping()
    finally:
        await node.stop()
        if agent is not None and hasattr(agent, "close"):
            await agent.close()
        await ctx.stop()
