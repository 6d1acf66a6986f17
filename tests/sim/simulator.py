"""Deterministic discrete-event simulator for clusters of real ``RaftCore`` instances.

One seeded ``random.Random`` drives everything: node clocks (ticks with skew),
the fake network (drop, delay, reorder, duplicate, symmetric and asymmetric
partitions), crash-restarts that lose whatever a node had not yet flushed, and
membership changes. Each node's shell is modeled honestly: a ``Ready`` is taken
at a FLUSH event some time after the core produced work, persisted to the
node's stable storage, its messages sent, its committed entries applied to a
small key-value state machine, then advanced. A crash drops the core and every
un-flushed change with it; restart rebuilds the core from stable storage only.

Invariants are checked as events happen (raising :class:`InvariantViolation`):
election safety (one leader per term), log matching (same index and term means
same entry and same predecessor), leader completeness (a new leader holds the
newest committed entry) and state-machine safety (no two nodes apply different
entries at one index). Client operations are recorded in a
:class:`~faultlab.operator.chaos.history.History` for the linearizability check.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from faultlab.nodes.raft.core import Config, NotLeader, ProposalDropped, RaftCore
from faultlab.nodes.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    Ready,
    Role,
    Snapshot,
)
from faultlab.operator.chaos.history import History, OpHandle, OpKind, Outcome

__all__ = ["InvariantViolation", "NetProfile", "SimNode", "Simulator"]

_TICK, _DELIVER, _FLUSH, _CALL, _FLUSH_DONE = 0, 1, 2, 3, 4
_LEADER = Role.LEADER
_SNAP = MsgType.SNAP
_EARLY = (MsgType.APP, MsgType.HEARTBEAT)


class InvariantViolation(AssertionError):
    """A Raft safety property failed in the simulation."""


@dataclass
class NetProfile:
    """Network weather: probabilities per message and delays in ticks."""

    drop: float = 0.0
    dup: float = 0.0
    min_delay: float = 0.05
    max_delay: float = 0.4
    long_delay: float = 0.0
    long_delay_max: float = 6.0
    snap_report: float = 1.0

    @classmethod
    def reliable(cls) -> NetProfile:
        return cls()

    @classmethod
    def unreliable(cls) -> NetProfile:
        return cls(drop=0.1, dup=0.02, long_delay=0.1, long_delay_max=3.0)


@dataclass(slots=True)
class Storage:
    """What survives a crash: exactly what the shell persisted from advanced Readies."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)


@dataclass(slots=True)
class ClientOp:
    client: str
    opid: int
    kind: OpKind
    key: str
    value: str | None
    handle: OpHandle
    node: str
    deadline: float
    via_log: bool = True


class SimNode:
    """One simulated server: its core, stable storage and state machine."""

    __slots__ = (
        "alive",
        "applied",
        "applied_log",
        "core",
        "flush_pending",
        "id",
        "incarnation",
        "kv",
        "pending_props",
        "pending_reads",
        "ready",
        "removed",
        "storage",
        "waiting_reads",
    )

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.storage = Storage()
        self.core: RaftCore = None  # type: ignore[assignment]
        self.alive = False
        self.removed = False
        self.incarnation = 0
        self.flush_pending = False
        self.ready: Ready | None = None
        self.kv: dict[str, str] = {}
        self.applied = 0
        self.applied_log: dict[int, bytes] = {}
        self.pending_props: dict[int, tuple[int, ClientOp]] = {}
        self.pending_reads: dict[bytes, ClientOp] = {}
        self.waiting_reads: list[tuple[int, ClientOp]] = []


class Simulator:
    """A seeded cluster of RaftCores over a fake network, checked after every event."""

    def __init__(
        self,
        seed: int,
        voters: int | Iterable[str] = 3,
        *,
        net: NetProfile | None = None,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        snapshot_every: int = 0,
        max_entries_per_msg: int = 64,
        max_inflight: int = 32,
        flush_delay: float = 0.1,
        tick_skew: float = 0.02,
        client_timeout: float = 40.0,
        retire_removed: bool = True,
        leader_early_send: bool = False,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = net or NetProfile.reliable()
        ids = [f"n{i + 1}" for i in range(voters)] if isinstance(voters, int) else list(voters)
        self.initial = ConfState(tuple(ids))
        self.election_tick = election_tick
        self.heartbeat_tick = heartbeat_tick
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.snapshot_every = snapshot_every
        self.max_entries_per_msg = max_entries_per_msg
        self.max_inflight = max_inflight
        self.flush_delay = flush_delay
        self.tick_skew = tick_skew
        self.client_timeout = client_timeout
        self.retire_removed = retire_removed
        self.leader_early_send = leader_early_send
        self.now = 0.0
        self.steps = 0
        self._seq = 0
        self._heap: list[tuple[float, int, int, object, object]] = []
        self.nodes: dict[str, SimNode] = {}
        self.tick_period: dict[str, float] = {}
        self.cut: set[tuple[str, str]] = set()
        self.isolated: set[str] = set()
        self._faulty = False
        self.sent: dict[MsgType, int] = dict.fromkeys(MsgType, 0)
        self.leader_of_term: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.max_committed = 0
        self._entry_index: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.history = History(clock=lambda: self.now)
        self._opid = 0
        self.open_ops: dict[int, ClientOp] = {}
        self.on_complete: list[Callable[[ClientOp, Outcome], None]] = []
        self.trace: list[str] | None = [] if trace else None
        for nid in ids:
            self._add_node(nid, self.initial)

    # ------------------------------------------------------------------ event loop

    def _push(self, at: float, kind: int, a: object, b: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, a, b))

    def call_at(self, at: float, fn: Callable[[], None]) -> None:
        self._push(at, _CALL, fn)

    def run_until(self, t_end: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        nodes = self.nodes
        while heap and heap[0][0] <= t_end:
            t, _, kind, a, b = pop(heap)
            self.now = t
            self.steps += 1
            if kind == _DELIVER:
                m: Message = a  # type: ignore[assignment]
                node = nodes.get(m.to)
                if node is None or not node.alive or node.incarnation != b:
                    continue
                if self._faulty and self.link_down(m.frm, m.to):
                    continue
                node.core.step(m)
                self._after(node)
            elif kind == _TICK:
                node = nodes[a]  # type: ignore[index]
                if not node.alive or node.incarnation != b:
                    continue
                node.core.tick()
                self._after(node)
                self._push(t + self.tick_period[node.id], _TICK, node.id, b)
            elif kind == _FLUSH:
                node = nodes[a]  # type: ignore[index]
                if not node.alive or node.incarnation != b:
                    continue
                node.flush_pending = False
                self._flush(node)
            elif kind == _FLUSH_DONE:
                node = nodes[a]  # type: ignore[index]
                if not node.alive or node.incarnation != b or node.ready is None:
                    continue
                rd = node.ready
                node.ready = None
                self._finish(node, rd)
            else:
                a()  # type: ignore[operator]
        if self.now < t_end:
            self.now = t_end

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def _after(self, node: SimNode) -> None:
        core = node.core
        if core.role == _LEADER:
            term = core.term
            who = self.leader_of_term.get(term)
            if who is None:
                self.leader_of_term[term] = node.id
                self._check_leader_completeness(node)
                self._log(f"{node.id} leader of term {term}")
            elif who != node.id:
                self._fail(f"election safety: {who} and {node.id} both lead term {term}")
        if not node.flush_pending and core.has_ready():
            node.flush_pending = True
            delay = self.rng.random() * self.flush_delay if self.flush_delay else 0.0
            self._push(self.now + delay, _FLUSH, node.id, node.incarnation)

    def _log(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.now:9.3f} {text}")

    def _fail(self, text: str) -> None:
        raise InvariantViolation(f"seed {self.seed} at t={self.now:.3f} step {self.steps}: {text}")

    # ------------------------------------------------------------------ nodes

    def _add_node(self, nid: str, peers: ConfState) -> SimNode:
        node = SimNode(nid)
        self.nodes[nid] = node
        skew = self.tick_skew
        self.tick_period[nid] = 1.0 + (self.rng.uniform(-skew, skew) if skew else 0.0)
        self._start(node, peers)
        return node

    def _start(self, node: SimNode, peers: ConfState) -> None:
        st = node.storage
        cfg = Config(
            node.id,
            election_tick=self.election_tick,
            heartbeat_tick=self.heartbeat_tick,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_entries_per_msg=self.max_entries_per_msg,
            max_inflight=self.max_inflight,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node.core = RaftCore(cfg, peers=peers, hard_state=st.hard_state, snapshot=st.snapshot, entries=st.entries)
        node.alive = True
        node.incarnation += 1
        node.flush_pending = False
        node.ready = None
        node.pending_props = {}
        node.pending_reads = {}
        node.waiting_reads = []
        if st.snapshot is not None:
            node.kv = dict(json.loads(st.snapshot.data))
            node.applied = st.snapshot.meta.index
        else:
            node.kv = {}
            node.applied = 0
        self._push(self.now + self.rng.random() * self.tick_period[node.id], _TICK, node.id, node.incarnation)
        self._after(node)

    def crash(self, nid: str) -> None:
        """Stop ``nid`` at once: un-flushed entries, votes and messages are lost."""
        node = self.nodes[nid]
        if node.alive:
            self._log(f"crash {nid}")
            node.alive = False
            node.incarnation += 1

    def restart(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.removed:
            return
        if node.alive:
            self.crash(nid)
        self._log(f"restart {nid}")
        self._start(node, self.initial)

    def add_node(self, nid: str) -> SimNode:
        """Start a brand-new empty node that waits to be added (as a learner) by the leader."""
        self._log(f"start joining node {nid}")
        return self._add_node(nid, ConfState(()))

    def retire(self, nid: str) -> None:
        """A node removed from the cluster shuts down for good."""
        self.crash(nid)
        self.nodes[nid].removed = True

    # ------------------------------------------------------------------ network

    def disconnect(self, nid: str) -> None:
        """Isolate ``nid`` from everyone until :meth:`connect` (the lab's disconnect)."""
        self.isolated.add(nid)
        self._faulty = True
        self._log(f"disconnect {nid}")

    def connect(self, nid: str) -> None:
        self.isolated.discard(nid)
        self._faulty = bool(self.cut or self.isolated)
        self._log(f"connect {nid}")

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between different groups (nodes in no group join the first)."""
        where: dict[str, int] = {}
        for g, members in enumerate(groups):
            for n in members:
                where[n] = g
        self.cut = {(a, b) for a in self.nodes for b in self.nodes if where.get(a, 0) != where.get(b, 0)}
        self._faulty = bool(self.cut or self.isolated)
        self._log(f"partition {[sorted(g) for g in groups]}")

    def block(self, frm: str, to: str) -> None:
        """Asymmetric cut: ``frm`` can no longer reach ``to``."""
        self.cut.add((frm, to))
        self._faulty = True
        self._log(f"block {frm}->{to}")

    def heal(self) -> None:
        """Remove partitions and blocks (isolated nodes stay isolated until connected)."""
        self.cut = set()
        self._faulty = bool(self.isolated)
        self._log("heal")

    def connected(self, nid: str) -> bool:
        return nid not in self.isolated

    def link_down(self, frm: str, to: str) -> bool:
        return self._faulty and (frm in self.isolated or to in self.isolated or (frm, to) in self.cut)

    def _send(self, m: Message) -> None:
        self.sent[m.type] += 1
        net = self.net
        rng = self.rng
        if self.link_down(m.frm, m.to) or (net.drop and rng.random() < net.drop):
            if m.type == _SNAP:
                self._report_snapshot(m, False)
            return
        to = self.nodes.get(m.to)
        if to is None:
            return
        inc = to.incarnation if to.alive else -1
        copies = 2 if net.dup and rng.random() < net.dup else 1
        for _ in range(copies):
            if net.long_delay and rng.random() < net.long_delay:
                delay = rng.uniform(net.max_delay, net.long_delay_max)
            else:
                delay = rng.uniform(net.min_delay, net.max_delay)
            self._push(self.now + delay, _DELIVER, m, inc)
        if m.type == _SNAP:
            self._report_snapshot(m, True)

    def _report_snapshot(self, m: Message, ok: bool) -> None:
        if self.net.snap_report >= 1.0 or self.rng.random() < self.net.snap_report:
            node = self.nodes[m.frm]
            node.core.report_snapshot(m.to, ok)

    # ------------------------------------------------------------------ the shell

    def _flush(self, node: SimNode) -> None:
        core = node.core
        if not core.has_ready():
            return
        rd = core.ready()
        if (
            self.leader_early_send
            and rd.role == _LEADER
            and rd.snapshot is None
            and rd.messages
            and (rd.entries or rd.hard_state is not None)
        ):
            # The leader ships appends while its own write is in flight (etcd, thesis 10.2.1);
            # a crash before the write completes loses the entries on the leader only.
            rest = []
            for m in rd.messages:
                if m.type in _EARLY:
                    self._send(m)
                else:
                    rest.append(m)
            rd.messages = rest
            node.ready = rd
            self._push(
                self.now + self.rng.random() * max(self.flush_delay, 0.3), _FLUSH_DONE, node.id, node.incarnation
            )
            return
        self._finish(node, rd)

    def _finish(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        self._persist(node, rd)
        for m in rd.messages:
            self._send(m)
        if rd.snapshot is not None:
            self._install(node, rd.snapshot)
        for e in rd.committed_entries:
            self._apply(node, e)
        for rs in rd.read_states:
            op = node.pending_reads.pop(rs.context, None)
            if op is not None:
                node.waiting_reads.append((rs.index, op))
        for ctx in rd.dropped_reads:
            op = node.pending_reads.pop(ctx, None)
            if op is not None:
                self._complete(op, Outcome.FAIL)
        if node.waiting_reads:
            self._serve_reads(node)
        core.advance(rd)
        if self.snapshot_every and node.applied - core.log.snap_index >= self.snapshot_every:
            self._take_snapshot(node)
        self._after(node)

    def _persist(self, node: SimNode, rd: Ready) -> None:
        st = node.storage
        if rd.snapshot is not None:
            st.snapshot = rd.snapshot
            st.entries = []
        if rd.entries:
            first = rd.entries[0].index
            base = st.snapshot.meta.index + 1 if st.snapshot is not None else 1
            del st.entries[first - base :]
            if len(st.entries) != first - base:
                self._fail(f"{node.id} persisted entries from {first} leaving a gap after {base + len(st.entries) - 1}")
            if first == base:
                prev_term = st.snapshot.meta.term if st.snapshot is not None else 0
            else:
                prev_term = st.entries[-1].term
            index = self._entry_index
            for e in rd.entries:
                key = (e.index, e.term)
                seen = index.get(key)
                if seen is None:
                    index[key] = (prev_term, e.data)
                elif seen[0] != prev_term or seen[1] != e.data:
                    self._fail(
                        f"log matching: {node.id} holds entry {key} after term {prev_term} "
                        f"with data {e.data[:40]!r}, another node has it after term {seen[0]} "
                        f"with data {seen[1][:40]!r}"
                    )
                prev_term = e.term
            st.entries.extend(rd.entries)
        if rd.hard_state is not None:
            st.hard_state = rd.hard_state

    def _install(self, node: SimNode, snap: Snapshot) -> None:
        meta = snap.meta
        got = self.committed.get(meta.index)
        if got is not None and got[0] != meta.term:
            self._fail(f"{node.id} installs a snapshot at {meta.index} term {meta.term}, committed term {got[0]}")
        for i in range(node.applied + 1, meta.index + 1):
            c = self.committed.get(i)
            if c is not None:
                node.applied_log[i] = c[1]
        node.kv = dict(json.loads(snap.data))
        node.applied = meta.index
        self._log(f"{node.id} installed snapshot {meta.index}")
        for idx in [i for i in node.pending_props if i <= meta.index]:
            del node.pending_props[idx]

    def _apply(self, node: SimNode, e: Entry) -> None:
        if e.index != node.applied + 1:
            self._fail(f"{node.id} applies entry {e.index} after {node.applied}")
        node.applied = e.index
        seen = self.committed.get(e.index)
        if seen is None:
            self.committed[e.index] = (e.term, e.data)
            if e.index > self.max_committed:
                self.max_committed = e.index
        elif seen[0] != e.term or seen[1] != e.data:
            self._fail(
                f"state machine safety: {node.id} applies ({e.index}, term {e.term}, {e.data[:40]!r}) "
                f"but term {seen[0]} {seen[1][:40]!r} was applied there before"
            )
        node.applied_log[e.index] = e.data
        output: str | None = None
        if e.type == EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            if cc.type == ConfChangeType.REMOVE_MEMBER and (self.retire_removed or cc.node_id == node.id):
                gone = cc.node_id
                if gone in self.nodes and not self.nodes[gone].removed:
                    self.call_at(self.now + 1.0, lambda: self.retire(gone))
        elif e.data[:2] in (b"P|", b"G|"):
            _, _, _, key, value = e.data.decode().split("|", 4)
            if e.data[:2] == b"P|":
                node.kv[key] = value
            else:
                output = node.kv.get(key)
        pend = node.pending_props.pop(e.index, None)
        if pend is not None:
            term, op = pend
            if term == e.term:
                self._complete(op, Outcome.OK, output)
            else:
                self._complete(op, Outcome.FAIL)

    def _serve_reads(self, node: SimNode) -> None:
        keep = []
        for index, op in node.waiting_reads:
            if index <= node.applied:
                self._complete(op, Outcome.OK, node.kv.get(op.key))
            else:
                keep.append((index, op))
        node.waiting_reads = keep

    def _take_snapshot(self, node: SimNode) -> None:
        core = node.core
        meta = core.snapshot_meta(node.applied)
        snap = Snapshot(meta, json.dumps(sorted(node.kv.items())).encode())
        st = node.storage
        base = st.snapshot.meta.index + 1 if st.snapshot is not None else 1
        del st.entries[: meta.index - base + 1]
        st.snapshot = snap
        core.compact(snap)

    def _check_leader_completeness(self, node: SimNode) -> None:
        c = self.max_committed
        if c == 0:
            return
        log = node.core.log
        if c <= log.snap_index:
            return
        term = log.term(c)
        if term != self.committed[c][0]:
            self._fail(
                f"leader completeness: {node.id} leads term {node.core.term} without committed entry {c} "
                f"(term {self.committed[c][0]}; its log has term {term}, last index {log.last_index()})"
            )

    # ------------------------------------------------------------------ clients

    def _next_opid(self) -> int:
        self._opid += 1
        return self._opid

    def client_put(self, client: str, nid: str, key: str, value: str) -> ClientOp | None:
        return self._client_log_op(client, nid, OpKind.PUT, key, value)

    def client_get(self, client: str, nid: str, key: str, *, via_log: bool = False) -> ClientOp | None:
        if via_log:
            return self._client_log_op(client, nid, OpKind.GET, key, None)
        node = self.nodes[nid]
        if not node.alive:
            return None
        opid = self._next_opid()
        ctx = f"{client}|{opid}".encode()
        try:
            node.core.read_index(ctx)
        except NotLeader:
            return None
        handle = self.history.begin(client, OpKind.GET, key, at=self.now)
        op = ClientOp(client, opid, OpKind.GET, key, None, handle, nid, self.now + self.client_timeout, False)
        node.pending_reads[ctx] = op
        self._watch(op)
        self._after(node)
        return op

    def _client_log_op(self, client: str, nid: str, kind: OpKind, key: str, value: str | None) -> ClientOp | None:
        node = self.nodes[nid]
        if not node.alive:
            return None
        opid = self._next_opid()
        tag = "P" if kind is OpKind.PUT else "G"
        data = f"{tag}|{client}|{opid}|{key}|{value or ''}".encode()
        try:
            index, term = node.core.propose(data)
        except (NotLeader, ProposalDropped):
            return None
        handle = self.history.begin(client, kind, key, value, at=self.now)
        op = ClientOp(client, opid, kind, key, value, handle, nid, self.now + self.client_timeout)
        node.pending_props[index] = (term, op)
        self._watch(op)
        self._after(node)
        return op

    def _watch(self, op: ClientOp) -> None:
        self.open_ops[op.opid] = op
        self.call_at(op.deadline, lambda: self._timeout(op))

    def _timeout(self, op: ClientOp) -> None:
        if op.opid in self.open_ops:
            self._complete(op, Outcome.UNKNOWN)

    def _complete(self, op: ClientOp, outcome: Outcome, output: str | None = None) -> None:
        if self.open_ops.pop(op.opid, None) is None:
            return
        self.history.end(op.handle, outcome, output=output, at=self.now)
        for cb in self.on_complete:
            cb(op, outcome)

    # ------------------------------------------------------------------ queries for tests

    def live_leaders(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive and n.core.role == _LEADER]

    def leader(self) -> SimNode | None:
        """The live leader with the highest term, if any."""
        best = None
        for n in self.live_leaders():
            if best is None or n.core.term > best.core.term:
                best = n
        return best

    def members(self) -> ConfState:
        lead = self.leader()
        if lead is not None:
            return lead.core.status().conf
        return self.initial
