"""The Raft consensus core: a deterministic state machine with no I/O, modeled on etcd-io/raft.

The shell drives it with :meth:`RaftCore.tick` (logical clock),
:meth:`RaftCore.step` (a message from a peer) and the client calls
(:meth:`~RaftCore.propose`, :meth:`~RaftCore.read_index`, ...), then drains
:meth:`RaftCore.ready` batches and acknowledges each with
:meth:`RaftCore.advance` (see :class:`~faultlab.nodes.raft.messages.Ready`).

Features: pre-vote, check-quorum with leader lease, pipelined replication with
bounded batches and an inflight window, fast log back-off, snapshots,
single-member membership changes with learners, leadership transfer and
ReadIndex.

Membership: a brand-new cluster writes its initial membership into the log as
committed CONF_CHANGE entries at term 1 (as etcd's bootstrap does), so a node
that joins later (started with empty ``peers``) learns it by replication. A
conf change takes effect on a node when the node learns the entry is
*committed* (inside the core; the shell calls nothing), and a leader accepts a
new one only once the previous one is committed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple

from faultlab.nodes.raft.log import RaftLog
from faultlab.nodes.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from faultlab.nodes.raft.progress import Progress, ProgressState

__all__ = [
    "CAMPAIGN_TRANSFER",
    "ConfChangePending",
    "Config",
    "NotLeader",
    "PeerProgress",
    "ProposalDropped",
    "RaftCore",
    "Status",
]

CAMPAIGN_TRANSFER = b"transfer"

_APP = MsgType.APP
_APP_RESP = MsgType.APP_RESP
_HEARTBEAT = MsgType.HEARTBEAT
_HEARTBEAT_RESP = MsgType.HEARTBEAT_RESP
_VOTE = MsgType.VOTE
_VOTE_RESP = MsgType.VOTE_RESP
_PRE_VOTE = MsgType.PRE_VOTE
_PRE_VOTE_RESP = MsgType.PRE_VOTE_RESP
_SNAP = MsgType.SNAP
_TIMEOUT_NOW = MsgType.TIMEOUT_NOW
_LEADER = Role.LEADER
_FOLLOWER = Role.FOLLOWER
_CANDIDATE = Role.CANDIDATE
_PRE_CANDIDATE = Role.PRE_CANDIDATE
_REPLICATE = ProgressState.REPLICATE
_PROBE = ProgressState.PROBE
_SNAPSHOT = ProgressState.SNAPSHOT


@dataclass
class Config:
    """Tunables of one core. Ticks are the shell's logical clock units."""

    id: str
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_msg: int = 256
    max_bytes_per_msg: int = 1 << 20
    max_inflight: int = 256
    max_committed_per_ready: int = 4096
    seed: int | None = None
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("Config.id must be a non-empty node id")
        if self.heartbeat_tick < 1:
            raise ValueError(f"Config.heartbeat_tick must be >= 1, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError(
                f"Config.election_tick ({self.election_tick}) must exceed heartbeat_tick ({self.heartbeat_tick})"
            )
        if self.max_inflight < 1 or self.max_entries_per_msg < 1:
            raise ValueError("Config.max_inflight and Config.max_entries_per_msg must be >= 1")


class NotLeader(Exception):
    """A leader-only call reached a node that is not the leader; ``leader_id`` is its hint ("" if unknown)."""

    def __init__(self, leader_id: str, node_id: str = "") -> None:
        hint = f"the leader is {leader_id!r}" if leader_id else "no leader is known; retry later"
        super().__init__(f"node {node_id!r} is not the leader: {hint}")
        self.leader_id = leader_id


class ProposalDropped(Exception):
    """The leader refused a proposal it could otherwise take (transferring leadership, ...)."""


class ConfChangePending(ProposalDropped):
    """A previous membership change is not committed yet; retry after it is."""


class PeerProgress(NamedTuple):
    match: int
    next: int
    state: str


@dataclass
class Status:
    id: str
    role: Role
    term: int
    vote: str
    leader_id: str
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    conf: ConfState
    progress: dict[str, PeerProgress] = field(default_factory=dict)
    lead_transferee: str = ""


class RaftCore:
    """One Raft peer's consensus state machine."""

    def __init__(
        self,
        config: Config,
        *,
        peers: ConfState | None = None,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | Snapshot | None = None,
        entries: list[Entry] | tuple[Entry, ...] = (),
        applied: int = 0,
    ) -> None:
        """Start a brand-new node (only ``peers``) or restart one from its durable state.

        ``peers`` is the initial membership of a brand-new cluster (every initial member
        passes the same set; it becomes identical bootstrap entries 1..n at term 1), or
        empty for a node that joins an existing cluster; it is ignored on restart, where membership
        comes from ``snapshot`` and the committed CONF_CHANGE entries. Pass the whole
        ``Snapshot`` (not just its meta) so the node can send it to lagging peers if it
        leads. Committed entries after ``max(snapshot index, applied)`` are handed out
        again for applying.
        """
        self.id = config.id
        self.cfg = config
        self.rng = config.rng if config.rng is not None else random.Random(config.seed)
        self.term = 0
        self.vote = ""
        self.lead = ""
        self.role = _FOLLOWER
        self.voters: tuple[str, ...] = ()
        self.learners: tuple[str, ...] = ()
        self.prs: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.msgs: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = ""
        self.pending_conf_index = 0
        self._snapshot: Snapshot | None = None
        self._read_seq = 0
        self._read_round_due = False
        self._read_acked: dict[str, int] = {}
        self._pending_reads: list[tuple[int, int, bytes]] = []
        self._unconfirmed_reads: list[bytes] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._outstanding = False

        meta: SnapshotMeta | None
        if isinstance(snapshot, Snapshot):
            self._snapshot = snapshot
            meta = snapshot.meta
        else:
            meta = snapshot
        fresh = hard_state is None and meta is None and not entries
        if meta is not None:
            self.log = RaftLog(meta.index, meta.term, entries)
            self.voters, self.learners = tuple(meta.conf.voters), tuple(meta.conf.learners)
        else:
            self.log = RaftLog(0, 0, entries)
        self._conf_history: list[tuple[int, ConfState]] = [(self.log.snap_index, self._conf_state())]
        if fresh and peers is not None and (peers.voters or peers.learners):
            boot = [ConfChange(ConfChangeType.ADD_VOTER, v) for v in sorted(peers.voters)]
            boot += [ConfChange(ConfChangeType.ADD_LEARNER, v) for v in sorted(peers.learners)]
            self.log.append([Entry(1, i + 1, EntryType.CONF_CHANGE, cc.encode()) for i, cc in enumerate(boot)])
            self.term = 1
            self._commit_to(len(boot))
        if hard_state is not None:
            self.term = hard_state.term
            self.vote = hard_state.vote
            commit = min(max(hard_state.commit, self.log.snap_index), self.log.last_index())
            self._commit_to(commit)
        if applied > self.log.applied:
            applied = min(applied, self.log.committed)
            self.log.applied = self.log.applying = applied
        self._prev_hs = HardState(self.term, self.vote, self.log.committed) if not fresh else HardState()
        self._prev_soft: tuple[str, Role, int] = ("", _FOLLOWER, 0)
        self._become_follower(self.term, "")

    # ------------------------------------------------------------------ public API

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        if self.role == _LEADER:
            self._tick_heartbeat()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self._promotable():
            self.election_elapsed = 0
            self._hup()

    def step(self, m: Message) -> None:
        """Handle a message from a peer; stale, duplicate and misaddressed ones are dropped safely."""
        mtype = m.type
        if mtype == MsgType.HUP:
            self._hup()
            return
        if m.to != self.id or m.frm == self.id:
            return
        if m.term > self.term:
            if mtype in (_VOTE, _PRE_VOTE):
                in_lease = (
                    self.cfg.check_quorum and self.lead != "" and (self.election_elapsed < self.cfg.election_tick)
                )
                if in_lease and m.context != CAMPAIGN_TRANSFER:
                    return
            if mtype == _PRE_VOTE or (mtype == _PRE_VOTE_RESP and not m.reject):
                pass
            elif mtype in (_APP, _HEARTBEAT, _SNAP):
                self._become_follower(m.term, m.frm)
            elif mtype == _VOTE and self.role != _LEADER:
                # Raft's Figure 2: only a granted vote restarts the election timer, so a
                # candidate with a stale log cannot keep the others from timing out.
                elapsed = self.election_elapsed
                self._become_follower(m.term, "")
                self.election_elapsed = elapsed
            else:
                self._become_follower(m.term, "")
        elif m.term < self.term:
            if mtype in (_APP, _HEARTBEAT) and (self.cfg.check_quorum or self.cfg.pre_vote):
                self._send(Message(_APP_RESP, self.id, m.frm, self.term))
            elif mtype == _PRE_VOTE:
                self._send(Message(_PRE_VOTE_RESP, self.id, m.frm, self.term, reject=True))
            return

        if mtype in (_VOTE, _PRE_VOTE):
            self._handle_vote(m)
            return
        role = self.role
        if role == _LEADER:
            self._step_leader(m)
        elif role == _FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns its (index, term). It is committed once it appears applied."""
        self._check_leader()
        if not data:
            raise ValueError("propose: data must be non-empty (empty entries are the leader's no-ops)")
        index = self.log.last_index() + 1
        self._append_and_replicate(Entry(self.term, index, EntryType.NORMAL, data))
        return index, self.term

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        """Propose one membership change; raises ConfChangePending while another is uncommitted."""
        self._check_leader()
        if self.pending_conf_index > self.log.committed:
            raise ConfChangePending(
                f"a membership change at index {self.pending_conf_index} is not committed yet "
                f"(commit {self.log.committed}); retry after it is"
            )
        node = cc.node_id
        if not node:
            raise ValueError("conf change: node_id must be non-empty")
        voters, learners = self.voters, self.learners
        if cc.type == ConfChangeType.ADD_LEARNER and (node in voters or node in learners):
            raise ValueError(f"conf change: {node!r} is already a member; remove it first")
        if cc.type == ConfChangeType.ADD_VOTER and node in voters:
            raise ValueError(f"conf change: {node!r} is already a voter")
        if cc.type == ConfChangeType.PROMOTE_LEARNER and node not in learners:
            raise ValueError(f"conf change: {node!r} is not a learner; add it as a learner first")
        if cc.type == ConfChangeType.REMOVE_MEMBER:
            if node not in voters and node not in learners:
                raise ValueError(f"conf change: {node!r} is not a member")
            if voters == (node,):
                raise ValueError(f"conf change: cannot remove {node!r}, the only voter")
        index = self.log.last_index() + 1
        self._append_and_replicate(Entry(self.term, index, EntryType.CONF_CHANGE, cc.encode()))
        self.pending_conf_index = index
        return index, self.term

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; a ReadState with ``context`` appears in a later Ready."""
        if self.role != _LEADER:
            raise NotLeader(self.lead, self.id)
        if self.log.term(self.log.committed) != self.term:
            self._unconfirmed_reads.append(context)
            return
        self._add_reads([context])

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to voter ``target``; aborted if not done within an election timeout."""
        if self.role != _LEADER:
            raise NotLeader(self.lead, self.id)
        if target not in self.voters:
            raise ValueError(f"transfer_leadership: {target!r} is not a voter of {self.voters}")
        if target == self.id or target == self.lead_transferee:
            return
        self.lead_transferee = target
        self.election_elapsed = 0
        pr = self.prs[target]
        if pr.match == self.log.last_index():
            self._send(Message(_TIMEOUT_NOW, self.id, target, self.term))
        else:
            self._send_append(target)

    def campaign(self) -> None:
        """Start an election now, as a leadership transfer does (no pre-vote, leases ignored)."""
        if self.role != _LEADER and self._promotable():
            self._campaign(pre=False, transfer=True)

    def has_ready(self) -> bool:
        if self._outstanding:
            return False
        log = self.log
        return bool(
            self.msgs
            or self._read_round_due
            or log.unstable <= log.last_index()
            or log.committed > log.applying
            or log.pending_snapshot is not None
            or self._read_states
            or self._dropped_reads
            or self._prev_hs.term != self.term
            or self._prev_hs.vote != self.vote
            or self._prev_hs.commit != log.committed
            or self._prev_soft != (self.lead, self.role, self.term)
        )

    def ready(self) -> Ready:
        """Take the next batch of work; call :meth:`advance` with it once handled."""
        if self._outstanding:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        self._outstanding = True
        if self._read_round_due:
            # One heartbeat round confirms every read registered since the last Ready.
            self._read_round_due = False
            self._read_seq += 1
            self._bcast_heartbeat()
        log = self.log
        prev = self._prev_hs
        hs: HardState | None = None
        if prev.term != self.term or prev.vote != self.vote or prev.commit != log.committed:
            hs = HardState(self.term, self.vote, log.committed)
        snapshot = log.pending_snapshot
        log.pending_snapshot = None
        msgs = self.msgs
        self.msgs = []
        read_states = self._read_states
        self._read_states = []
        dropped = self._dropped_reads
        self._dropped_reads = []
        self._prev_soft = (self.lead, self.role, self.term)
        return Ready(
            hs,
            log.take_unstable(),
            snapshot,
            msgs,
            log.take_next_committed(self.cfg.max_committed_per_ready),
            read_states,
            self.lead,
            self.role,
            self.term,
            dropped,
        )

    def advance(self, rd: Ready) -> None:
        """``rd`` is durable, its messages sent and its committed entries applied."""
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        log = self.log
        if rd.snapshot is not None and rd.snapshot.meta.index > log.applied:
            log.applied = rd.snapshot.meta.index
        if rd.committed_entries:
            last = rd.committed_entries[-1].index
            if last > log.applied:
                log.applied = last
        self._outstanding = False

    def applied_to(self, index: int) -> None:
        """Optional: record progress of an applier that runs behind :meth:`advance`."""
        if index > self.log.applied:
            self.log.applied = min(index, self.log.applying)

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """The metadata (term, membership) for a state-machine snapshot taken at applied ``index``."""
        term = self.log.term(index)
        if term is None or index > self.log.applied:
            raise ValueError(
                f"snapshot_meta: index {index} must be applied and in the log "
                f"({self.log.snap_index}..{self.log.applied})"
            )
        return SnapshotMeta(index, term, self._conf_at(index))

    def compact(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` (taken at an applied index) for lagging peers and drop the log before it."""
        meta = snapshot.meta
        if meta.index <= self.log.snap_index:
            return
        if meta.index > self.log.applied:
            raise ValueError(f"compact: index {meta.index} is not applied yet (applied {self.log.applied})")
        term = self.log.term(meta.index)
        if term != meta.term:
            raise ValueError(f"compact: entry {meta.index} has term {term}, the snapshot says {meta.term}")
        self.log.compact(meta.index)
        self._snapshot = snapshot
        hist = self._conf_history
        keep = 0
        for i, (idx, _) in enumerate(hist):
            if idx <= meta.index:
                keep = i
        del hist[:keep]

    def report_unreachable(self, peer: str) -> None:
        """The transport failed to reach ``peer``: stop pipelining to it."""
        if self.role == _LEADER:
            pr = self.prs.get(peer)
            if pr is not None and pr.state == _REPLICATE:
                pr.become_probe()

    def report_snapshot(self, peer: str, ok: bool) -> None:
        """The transport finished (``ok``) or gave up sending a snapshot to ``peer``."""
        if self.role != _LEADER:
            return
        pr = self.prs.get(peer)
        if pr is None or pr.state != _SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True

    def status(self) -> Status:
        progress = {}
        if self.role == _LEADER:
            progress = {p: PeerProgress(pr.match, pr.next, pr.state.name) for p, pr in self.prs.items()}
        return Status(
            self.id,
            self.role,
            self.term,
            self.vote,
            self.lead,
            self.log.committed,
            self.log.applied,
            self.log.last_index(),
            self.log.snap_index,
            self._conf_state(),
            progress,
            self.lead_transferee,
        )

    # ------------------------------------------------------------------ roles

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = ""
        self.lead = ""
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.rng.randrange(self.cfg.election_tick, 2 * self.cfg.election_tick)
        self.lead_transferee = ""
        self.votes = {}
        self.prs = {}
        self.pending_conf_index = 0
        self._drop_reads()

    def _become_follower(self, term: int, lead: str) -> None:
        self._reset(term)
        self.lead = lead
        self.role = _FOLLOWER

    def _become_pre_candidate(self) -> None:
        self.role = _PRE_CANDIDATE
        self.votes = {}
        self.lead = ""
        self._drop_reads()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = _CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = _LEADER
        last = self.log.last_index()
        mi = self.cfg.max_inflight
        prs = self.prs
        for v in self.voters:
            prs[v] = Progress(last + 1, mi)
        for v in self.learners:
            prs[v] = Progress(last + 1, mi, is_learner=True)
        own = prs.get(self.id)
        if own is not None:
            own.match = last
            own.become_replicate()
            own.recent_active = True
        self._read_acked = {}
        self.pending_conf_index = last + 1
        self._append_and_replicate(Entry(self.term, last + 1, EntryType.NORMAL, b""), force_bcast=True)

    def _promotable(self) -> bool:
        return self.id in self.voters

    def _hup(self, transfer: bool = False) -> None:
        if self.role == _LEADER or not self._promotable():
            return
        if transfer or not self.cfg.pre_vote:
            self._campaign(pre=False, transfer=transfer)
        else:
            self._campaign(pre=True, transfer=False)

    def _campaign(self, *, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            mtype = _PRE_VOTE
            term = self.term + 1
        else:
            self._become_candidate()
            mtype = _VOTE
            term = self.term
        if self._poll(self.id, True) > 0:
            if pre:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
            return
        last, last_term = self.log.last_index(), self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for v in self.voters:
            if v != self.id:
                self._send(Message(mtype, self.id, v, term, last_term, last, context=ctx))

    def _poll(self, voter: str, granted: bool) -> int:
        """Record a vote; 1 = won, -1 = lost, 0 = pending."""
        if voter not in self.votes:
            self.votes[voter] = granted
        yes = no = 0
        votes = self.votes
        for v in self.voters:
            g = votes.get(v)
            if g is True:
                yes += 1
            elif g is False:
                no += 1
        q = len(self.voters) // 2 + 1
        if yes >= q:
            return 1
        if no >= q or len(self.voters) == 0:
            return -1
        return 0

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, "")
                return
            self.lead_transferee = ""
            for p, pr in self.prs.items():
                if pr.state == _SNAPSHOT and p != self.id:
                    if pr.snapshot_stale:
                        pr.become_probe()
                    else:
                        pr.snapshot_stale = True
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = 0
        prs = self.prs
        for v in self.voters:
            pr = prs.get(v)
            if v == self.id or (pr is not None and pr.recent_active):
                active += 1
        for p, pr in prs.items():
            if p != self.id:
                pr.recent_active = False
        return active >= len(self.voters) // 2 + 1

    # ------------------------------------------------------------------ message handling

    def _handle_vote(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm or (self.vote == "" and self.lead == "") or (m.type == _PRE_VOTE and m.term > self.term)
        )
        resp = _VOTE_RESP if m.type == _VOTE else _PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp, self.id, m.frm, m.term))
            if m.type == _VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, self.id, m.frm, self.term, reject=True))

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == _APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == _HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == _SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == _TIMEOUT_NOW:
            self._hup(transfer=True)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t == _APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == _HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == _SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif (t == _VOTE_RESP and self.role == _CANDIDATE) or (t == _PRE_VOTE_RESP and self.role == _PRE_CANDIDATE):
            res = self._poll(m.frm, not m.reject)
            if res > 0:
                if self.role == _PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
            elif res < 0:
                self._become_follower(self.term, "")

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._send(Message(_APP_RESP, self.id, m.frm, self.term, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.entries)
        if last_new is not None:
            commit = m.commit if m.commit < last_new else last_new
            if commit > log.committed:
                self._commit_to(commit)
            self._send(Message(_APP_RESP, self.id, m.frm, self.term, index=last_new))
            return
        hint = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        self._send(
            Message(
                _APP_RESP,
                self.id,
                m.frm,
                self.term,
                log.term(hint) or 0,
                m.index,
                reject=True,
                reject_hint=hint,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        commit = min(m.commit, self.log.last_index())
        if commit > self.log.committed:
            self._commit_to(commit)
        self._send(Message(_HEARTBEAT_RESP, self.id, m.frm, self.term, index=m.index, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        s = m.snapshot
        log = self.log
        if s is None:
            return
        meta = s.meta
        if meta.index <= log.committed:
            self._send(Message(_APP_RESP, self.id, m.frm, self.term, index=log.committed))
            return
        if log.match_term(meta.index, meta.term):
            self._commit_to(meta.index)
            self._send(Message(_APP_RESP, self.id, m.frm, self.term, index=log.committed))
            return
        log.restore(s)
        self.voters, self.learners = tuple(meta.conf.voters), tuple(meta.conf.learners)
        self._conf_history = [(meta.index, self._conf_state())]
        self._snapshot = s
        self._send(Message(_APP_RESP, self.id, m.frm, self.term, index=log.last_index()))

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t != _APP_RESP and t != _HEARTBEAT_RESP:
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        if t == _HEARTBEAT_RESP:
            pr.probe_sent = False
            if pr.state == _REPLICATE and len(pr.inflights) >= pr.max_inflight:
                pr.free_first()
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.index and self._pending_reads:
                if m.index > self._read_acked.get(m.frm, 0):
                    self._read_acked[m.frm] = m.index
                self._release_reads()
            return
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint = self.log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == _REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == _PROBE:
            pr.become_replicate()
        elif pr.state == _SNAPSHOT:
            if pr.match >= pr.pending_snapshot:
                pr.become_probe()
        else:
            pr.free_le(m.index)
        if self._maybe_commit():
            self._after_commit()
            if self.role != _LEADER or m.frm not in self.prs:
                return
        elif old_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(_TIMEOUT_NOW, self.id, m.frm, self.term))

    # ------------------------------------------------------------------ replication

    def _send(self, m: Message) -> None:
        self.msgs.append(m)

    def _check_leader(self) -> None:
        if self.role != _LEADER:
            raise NotLeader(self.lead, self.id)
        if self.lead_transferee:
            raise ProposalDropped(
                f"node {self.id!r} is transferring leadership to {self.lead_transferee!r}; retry there"
            )

    def _append_and_replicate(self, e: Entry, force_bcast: bool = False) -> None:
        self.log.append([e])
        own = self.prs.get(self.id)
        if own is not None:
            own.maybe_update(e.index)
        if len(self.voters) <= 1 and self._maybe_commit():
            self._after_commit()
            return
        send = self._send_append
        for p in self.prs:
            if p != self.id:
                send(p, send_if_empty=force_bcast)

    def _send_append(self, to: str, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        log = self.log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:
            if prev > log.last_index():
                pr.next = log.last_index() + 1
                return False
            snap = self._snapshot
            if not pr.recent_active or snap is None:
                return False
            pr.become_snapshot(snap.meta.index)
            self._send(Message(_SNAP, self.id, to, self.term, snapshot=snap))
            return True
        if pr.next > log.last_index():
            if not send_if_empty:
                return False
            ents: list[Entry] = []
        else:
            ents = log.entries_from(pr.next, self.cfg.max_entries_per_msg, self.cfg.max_bytes_per_msg)
        self._send(Message(_APP, self.id, to, self.term, prev_term, prev, ents, log.committed))
        if ents:
            pr.sent(ents[-1].index)
        return True

    def _bcast_heartbeat(self) -> None:
        commit = self.log.committed
        seq = self._read_seq
        for p, pr in self.prs.items():
            if p != self.id:
                c = pr.match if pr.match < commit else commit
                self._send(Message(_HEARTBEAT, self.id, p, self.term, index=seq, commit=c))

    def _maybe_commit(self) -> bool:
        voters = self.voters
        if not voters:
            return False
        prs = self.prs
        matches = sorted(prs[v].match if v in prs else 0 for v in voters)
        mci = matches[(len(matches) - 1) // 2]
        if mci > self.log.committed and self.log.term(mci) == self.term:
            self._commit_to(mci)
            return True
        return False

    def _after_commit(self) -> None:
        """Leader: commit advanced; settle conf-change fallout, reads, and tell the followers."""
        while self.role == _LEADER and self._maybe_commit():
            pass
        if self._unconfirmed_reads and self.log.term(self.log.committed) == self.term:
            reads = self._unconfirmed_reads
            self._unconfirmed_reads = []
            self._add_reads(reads)
        for p in self.prs:
            if p != self.id:
                self._send_append(p)
        if self.id not in self.voters:
            self._become_follower(self.term, "")

    def _commit_to(self, index: int) -> None:
        log = self.log
        old = log.committed
        if index <= old:
            return
        log.committed = index
        for e in log.slice(old + 1, index + 1):
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(e)

    # ------------------------------------------------------------------ membership

    def _conf_state(self) -> ConfState:
        return ConfState(self.voters, self.learners)

    def _conf_at(self, index: int) -> ConfState:
        conf = self._conf_history[0][1]
        for idx, c in self._conf_history:
            if idx > index:
                break
            conf = c
        return conf

    def _apply_conf_change(self, e: Entry) -> None:
        cc = ConfChange.decode(e.data)
        node = cc.node_id
        voters = [v for v in self.voters if v != node]
        learners = [v for v in self.learners if v != node]
        was_voter = node in self.voters
        was_learner = node in self.learners
        kind = cc.type
        if kind == ConfChangeType.ADD_VOTER or (kind == ConfChangeType.PROMOTE_LEARNER and was_learner):
            voters.append(node)
        elif kind == ConfChangeType.PROMOTE_LEARNER:
            if was_voter:
                voters.append(node)
        elif kind == ConfChangeType.ADD_LEARNER:
            if was_voter:
                voters.append(node)
            else:
                learners.append(node)
        self.voters, self.learners = tuple(voters), tuple(learners)
        self._conf_history.append((e.index, self._conf_state()))
        if self.role == _LEADER:
            self._sync_progress()
        elif self.role != _FOLLOWER and not self._promotable():
            self._become_follower(self.term, "")

    def _sync_progress(self) -> None:
        prs = self.prs
        last = self.log.last_index()
        members = self.voters + self.learners
        commit = self.log.committed
        for p in list(prs):
            if p not in members:
                pr = prs.pop(p)
                if p != self.id:
                    c = pr.match if pr.match < commit else commit
                    self._send(Message(_HEARTBEAT, self.id, p, self.term, commit=c))
        for p in members:
            pr = prs.get(p)
            if pr is None:
                pr = prs[p] = Progress(last + 1, self.cfg.max_inflight)
                pr.recent_active = True
            pr.is_learner = p in self.learners
        if self.lead_transferee and self.lead_transferee not in self.voters:
            self.lead_transferee = ""
        self._release_reads()

    # ------------------------------------------------------------------ reads

    def _add_reads(self, contexts: list[bytes]) -> None:
        commit = self.log.committed
        if self.voters == (self.id,):
            self._read_states.extend(ReadState(commit, c) for c in contexts)
            return
        seq = self._read_seq + 1
        self._pending_reads.extend((seq, commit, c) for c in contexts)
        self._read_round_due = True

    def _release_reads(self) -> None:
        if not self._pending_reads or not self.voters:
            return
        acked = self._read_acked
        seqs = sorted(self._read_seq if v == self.id else acked.get(v, 0) for v in self.voters)
        confirmed = seqs[(len(seqs) - 1) // 2]
        pending = self._pending_reads
        n = 0
        while n < len(pending) and pending[n][0] <= confirmed:
            _, index, ctx = pending[n]
            self._read_states.append(ReadState(index, ctx))
            n += 1
        if n:
            del pending[:n]

    def _drop_reads(self) -> None:
        self._read_round_due = False
        if self._pending_reads:
            self._dropped_reads.extend(c for _, _, c in self._pending_reads)
            self._pending_reads = []
        if self._unconfirmed_reads:
            self._dropped_reads.extend(self._unconfirmed_reads)
            self._unconfirmed_reads = []
