"""Unit tests of the pure Raft core on a synchronous in-memory network."""

from __future__ import annotations

import pytest

from faultlab.nodes.raft.core import (
    ConfChangePending,
    Config,
    NotLeader,
    ProposalDropped,
    RaftCore,
)
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
    Role,
    Snapshot,
    SnapshotMeta,
)


class Net:
    """Delivers every message at once (unless cut) and persists every Ready immediately."""

    def __init__(self, ids: list[str], learners: tuple[str, ...] = (), **kw: object) -> None:
        self.peers = ConfState(tuple(ids), learners)
        self.kw = kw
        self.nodes: dict[str, RaftCore] = {}
        self.cut: set[tuple[str, str]] = set()
        self.reads: dict[str, list[ReadState]] = {}
        self.dropped: dict[str, list[bytes]] = {}
        self.snapshots: dict[str, list[Snapshot]] = {}
        self.applied: dict[str, list[Entry]] = {}
        self.stable: dict[str, tuple[HardState | None, list[Entry]]] = {}
        self.sent: list[Message] = []
        for i, nid in enumerate(ids + list(learners)):
            self.add(nid, self.peers, seed=i)

    def add(self, nid: str, peers: ConfState, seed: int = 99) -> RaftCore:
        core = RaftCore(Config(nid, seed=seed, **self.kw), peers=peers)  # type: ignore[arg-type]
        self.nodes[nid] = core
        self.reads[nid] = []
        self.dropped[nid] = []
        self.snapshots[nid] = []
        self.applied[nid] = []
        self.stable[nid] = (None, [])
        return core

    def isolate(self, nid: str) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut |= {(nid, other), (other, nid)}

    def heal(self) -> None:
        self.cut = set()

    def flush(self, max_rounds: int = 1000) -> None:
        for _ in range(max_rounds):
            msgs: list[Message] = []
            for nid, core in self.nodes.items():
                if core.has_ready():
                    rd = core.ready()
                    hs, ents = self.stable[nid]
                    if rd.entries:
                        first = rd.entries[0].index
                        ents = [e for e in ents if e.index < first] + rd.entries
                    self.stable[nid] = (rd.hard_state or hs, ents)
                    self.reads[nid].extend(rd.read_states)
                    self.dropped[nid].extend(rd.dropped_reads)
                    if rd.snapshot is not None:
                        self.snapshots[nid].append(rd.snapshot)
                    self.applied[nid].extend(rd.committed_entries)
                    msgs.extend(rd.messages)
                    core.advance(rd)
            if not msgs:
                return
            for m in msgs:
                self.sent.append(m)
                if (m.frm, m.to) not in self.cut and m.to in self.nodes:
                    if m.type == MsgType.SNAP:
                        self.nodes[m.frm].report_snapshot(m.to, True)
                    self.nodes[m.to].step(m)
        raise AssertionError("network did not quiesce")

    def tick(self, n: int = 1, only: list[str] | None = None) -> None:
        for _ in range(n):
            for nid in only or list(self.nodes):
                self.nodes[nid].tick()
            self.flush()

    def elect(self, nid: str) -> RaftCore:
        self.nodes[nid].campaign()
        self.flush()
        assert self.nodes[nid].role == Role.LEADER
        return self.nodes[nid]

    def leader(self) -> RaftCore | None:
        leaders = [c for c in self.nodes.values() if c.role == Role.LEADER]
        return max(leaders, key=lambda c: c.term) if leaders else None


def data_of(net: Net, nid: str) -> list[bytes]:
    return [e.data for e in net.applied[nid] if e.type == EntryType.NORMAL and e.data]


# ---------------------------------------------------------------------- basics


def test_bootstrap_writes_membership_into_the_log() -> None:
    core = RaftCore(Config("a", seed=1), peers=ConfState(("a", "b"), ("c",)))
    rd = core.ready()
    assert rd.hard_state == HardState(1, "", 3)
    assert [ConfChange.decode(e.data) for e in rd.entries] == [
        ConfChange(ConfChangeType.ADD_VOTER, "a"),
        ConfChange(ConfChangeType.ADD_VOTER, "b"),
        ConfChange(ConfChangeType.ADD_LEARNER, "c"),
    ]
    assert rd.committed_entries == rd.entries
    core.advance(rd)
    assert core.status().conf == ConfState(("a", "b"), ("c",))
    assert not core.has_ready()


def test_conf_change_roundtrip_and_bad_data() -> None:
    cc = ConfChange(ConfChangeType.PROMOTE_LEARNER, "n4", "10.0.0.4:7000")
    assert ConfChange.decode(cc.encode()) == cc
    with pytest.raises(ValueError, match="not a conf change"):
        ConfChange.decode(b"garbage")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="election_tick"):
        Config("a", election_tick=1, heartbeat_tick=1)
    with pytest.raises(ValueError, match="id"):
        Config("")


def test_single_node_elects_itself_and_commits() -> None:
    net = Net(["a"])
    net.tick(25)
    a = net.nodes["a"]
    assert a.role == Role.LEADER
    index, term = a.propose(b"x")
    net.flush()
    assert a.log.committed == index and term == a.term
    assert data_of(net, "a") == [b"x"]


def test_randomized_election_timeout_range() -> None:
    core = RaftCore(Config("a", election_tick=10, seed=3), peers=ConfState(("a", "b", "c")))
    seen = set()
    for _ in range(200):
        core._become_follower(core.term, "")
        seen.add(core.randomized_election_timeout)
    assert min(seen) == 10 and max(seen) == 19


def test_elects_a_leader_and_replicates() -> None:
    net = Net(["a", "b", "c"])
    net.tick(30)
    lead = net.leader()
    assert lead is not None
    followers = [n for n in net.nodes if n != lead.id]
    assert all(net.nodes[f].lead == lead.id for f in followers)
    for i in range(5):
        lead.propose(b"v%d" % i)
    net.flush()
    for nid in net.nodes:
        assert data_of(net, nid) == [b"v%d" % i for i in range(5)]


def test_propose_on_follower_raises_not_leader_with_hint() -> None:
    net = Net(["a", "b", "c"])
    net.elect("a")
    with pytest.raises(NotLeader) as info:
        net.nodes["b"].propose(b"x")
    assert info.value.leader_id == "a"
    with pytest.raises(NotLeader):
        net.nodes["b"].read_index(b"r")
    with pytest.raises(NotLeader):
        net.nodes["b"].transfer_leadership("a")
    with pytest.raises(ValueError, match="non-empty"):
        net.nodes["a"].propose(b"")


def test_messages_wait_for_persistence_of_their_ready() -> None:
    """The vote and the vote response travel in the same Ready as the hard state that records them."""
    net = Net(["a", "b", "c"], pre_vote=False)
    net.flush()
    b = net.nodes["b"]
    b.step(Message(MsgType.VOTE, "a", "b", term=5, log_term=1, index=3))
    rd = b.ready()
    assert rd.hard_state == HardState(5, "a", 3)
    assert [(m.type, m.reject) for m in rd.messages] == [(MsgType.VOTE_RESP, False)]


def test_vote_refused_to_candidate_with_stale_log() -> None:
    net = Net(["a", "b", "c"], check_quorum=False)
    lead = net.elect("a")
    lead.propose(b"x")
    net.flush()
    c = net.nodes["c"]
    c.step(Message(MsgType.VOTE, "b", "c", term=9, log_term=1, index=3))
    rd = c.ready()
    assert [(m.type, m.reject) for m in rd.messages] == [(MsgType.VOTE_RESP, True)]


# ---------------------------------------------------------------------- pre-vote and check-quorum


def test_pre_vote_partitioned_node_rejoins_without_disrupting() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    term = lead.term
    net.isolate("c")
    net.tick(100)
    assert net.nodes["c"].term == term, "pre-vote must not bump the term of an isolated node"
    assert net.nodes["c"].role == Role.PRE_CANDIDATE
    net.heal()
    net.tick(5)
    assert lead.role == Role.LEADER and lead.term == term
    assert net.nodes["c"].lead == "a" and net.nodes["c"].term == term


def test_without_pre_vote_a_rejoining_node_disrupts() -> None:
    net = Net(["a", "b", "c"], pre_vote=False, check_quorum=False)
    lead = net.elect("a")
    term = lead.term
    net.isolate("c")
    net.tick(100)
    assert net.nodes["c"].term > term
    net.heal()
    net.tick(25)
    assert lead.term > term


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("a")
    net.tick(21, only=["a"])
    assert lead.role == Role.FOLLOWER and lead.lead == ""


def test_without_check_quorum_an_isolated_leader_stays() -> None:
    net = Net(["a", "b", "c"], check_quorum=False)
    lead = net.elect("a")
    net.isolate("a")
    net.tick(40, only=["a"])
    assert lead.role == Role.LEADER


def test_leader_lease_followers_ignore_votes_while_leader_is_live() -> None:
    net = Net(["a", "b", "c"], pre_vote=False)
    lead = net.elect("a")
    term = lead.term
    b = net.nodes["b"]
    b.step(Message(MsgType.VOTE, "c", "b", term=term + 1, log_term=lead.log.last_term(), index=100))
    assert b.term == term and b.vote != "c"
    assert not any(m.type == MsgType.VOTE_RESP for m in b.msgs)


def test_transfer_campaign_bypasses_the_lease() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    b = net.nodes["b"]
    b.step(Message(MsgType.VOTE, "c", "b", lead.term + 1, lead.log.last_term(), 100, context=b"transfer"))
    assert b.term == lead.term + 1 and b.vote == "c"


def test_stale_leader_learns_the_new_term_from_a_response() -> None:
    net = Net(["a", "b", "c"], check_quorum=False)
    old = net.elect("a")
    net.isolate("a")
    net.tick(40, only=["b", "c"])
    new = net.leader()
    assert new is not None and new.id != "a" and old.role == Role.LEADER
    net.heal()
    net.tick(2)
    assert old.role == Role.FOLLOWER and old.term == new.term


# ---------------------------------------------------------------------- commit rules


def test_leader_never_commits_an_old_term_entry_by_counting() -> None:
    """Figure 8: a term-2 entry on a majority is not committed by a term-4 leader until its own entry is."""
    ents = [
        Entry(1, i + 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, x).encode())
        for i, x in enumerate("abc")
    ]
    ents.append(Entry(2, 4, EntryType.NORMAL, b"old"))
    a = RaftCore(Config("a", seed=1), hard_state=HardState(3, "", 3), entries=ents)
    a.campaign()
    a.step(Message(MsgType.VOTE_RESP, "b", "a", a.term))
    assert a.role == Role.LEADER and a.term == 4
    a.step(Message(MsgType.APP_RESP, "b", "a", 4, index=4))
    assert a.log.committed == 3, "committed an old-term entry by counting replicas"
    a.step(Message(MsgType.APP_RESP, "b", "a", 4, index=5))
    assert a.log.committed == 5


def test_follower_truncates_conflicting_uncommitted_suffix() -> None:
    net = Net(["a", "b", "c"])
    old = net.elect("a")
    net.isolate("a")
    for i in range(5):
        old.propose(b"lost%d" % i)
    net.flush()
    new = net.elect("b")
    new.propose(b"kept")
    net.flush()
    net.heal()
    net.tick(3)
    assert old.role == Role.FOLLOWER
    for nid in net.nodes:
        assert b"kept" in data_of(net, nid)
        assert not any(d.startswith(b"lost") for d in data_of(net, nid))
    assert old.log.last_index() == new.log.last_index()


def test_fast_backoff_needs_few_round_trips() -> None:
    net = Net(["a", "b", "c"])
    old = net.elect("a")
    net.isolate("a")
    for i in range(50):
        old.propose(b"stale%d" % i)
    net.flush()
    new = net.elect("b")
    for i in range(50):
        new.propose(b"new%d" % i)
    net.flush()
    net.elect("c")
    net.heal()
    before = len(net.sent)
    net.tick(3)
    rejects = [m for m in net.sent[before:] if m.type == MsgType.APP_RESP and m.reject and m.frm == "a"]
    assert 1 <= len(rejects) <= 3, f"{len(rejects)} rejections to skip a 50-entry divergent suffix"
    assert data_of(net, "a")[-50:] == [b"new%d" % i for i in range(50)]


# ---------------------------------------------------------------------- learners and membership


def test_learner_replicates_but_is_not_in_the_quorum() -> None:
    net = Net(["a", "b"], learners=("c",))
    lead = net.elect("a")
    net.isolate("b")
    index, _ = lead.propose(b"x")
    net.flush()
    assert net.nodes["c"].log.last_index() == index, "the learner should receive the entry"
    assert lead.log.committed < index, "a learner's ack must not count toward the quorum"
    net.heal()
    net.tick(2)
    assert lead.log.committed >= index
    net.isolate("a")
    net.tick(60, only=["c"])
    assert net.nodes["c"].role == Role.FOLLOWER and net.nodes["c"].term == lead.term


def test_add_learner_promote_and_remove() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.add("d", ConfState(()))
    lead.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    with pytest.raises(ConfChangePending):
        net.nodes["a"].propose_conf_change(ConfChange(ConfChangeType.REMOVE_MEMBER, "c"))
    net.flush()
    assert lead.status().conf == ConfState(("a", "b", "c"), ("d",))
    lead.propose(b"x")
    net.flush()
    assert data_of(net, "d") == [b"x"], "a joining learner replays the log from the bootstrap entries"
    with pytest.raises(ValueError, match="already a member"):
        lead.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    lead.propose_conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, "d"))
    net.flush()
    assert net.nodes["d"].status().conf == ConfState(("a", "b", "c", "d"), ())
    lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE_MEMBER, "b"))
    net.flush()
    assert all(net.nodes[n].status().conf.voters == ("a", "c", "d") for n in "acd")
    b = net.nodes["b"]
    assert b.status().conf.voters == ("a", "c", "d"), "the removed node learns its removal"
    net.isolate("b")
    net.tick(60, only=["b"])
    assert b.term == lead.term and b.role == Role.FOLLOWER, "a removed node does not campaign"


def test_conf_change_validation() -> None:
    net = Net(["a"])
    lead = net.elect("a")
    with pytest.raises(ValueError, match="not a learner"):
        lead.propose_conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, "z"))
    with pytest.raises(ValueError, match="not a member"):
        lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE_MEMBER, "z"))
    with pytest.raises(ValueError, match="only voter"):
        lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE_MEMBER, "a"))


def test_removed_leader_steps_down_and_the_rest_elect() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE_MEMBER, "a"))
    net.flush()
    assert lead.role == Role.FOLLOWER
    assert net.nodes["b"].status().conf.voters == ("b", "c")
    net.tick(40)
    new = net.leader()
    assert new is not None and new.id in ("b", "c")
    new.propose(b"after")
    net.flush()
    assert b"after" in data_of(net, "b") and b"after" in data_of(net, "c")


def test_new_leader_must_commit_in_its_term_before_a_conf_change() -> None:
    ents = [
        Entry(1, i + 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, x).encode())
        for i, x in enumerate("abc")
    ]
    a = RaftCore(Config("a", seed=1), hard_state=HardState(1, "", 3), entries=ents)
    a.campaign()
    a.step(Message(MsgType.VOTE_RESP, "b", "a", a.term))
    assert a.role == Role.LEADER and a.log.committed == 3
    with pytest.raises(ConfChangePending):
        a.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    a.step(Message(MsgType.APP_RESP, "b", "a", a.term, index=4))
    assert a.log.committed == 4
    index, _ = a.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    assert index == 5


# ---------------------------------------------------------------------- ReadIndex


def test_read_index_waits_for_the_leaders_first_commit() -> None:
    net = Net(["a", "b", "c"])
    net.flush()
    a = net.nodes["a"]
    a.campaign()
    rd = a.ready()
    a.advance(rd)
    for m in rd.messages:
        net.nodes[m.to].step(m)
    for nid in "bc":
        rdf = net.nodes[nid].ready()
        net.nodes[nid].advance(rdf)
        for m in rdf.messages:
            a.step(m)
    assert a.role == Role.LEADER and a.log.committed < a.log.last_index()
    a.read_index(b"r1")
    rd = a.ready()
    assert rd.read_states == [], "answered a read before committing an entry of its term"
    a.advance(rd)
    for m in rd.messages:
        net.nodes[m.to].step(m)
    net.flush()
    assert net.reads["a"] == [ReadState(a.log.last_index(), b"r1")]


def test_read_index_needs_a_quorum_and_carries_the_commit_at_request_time() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    lead.propose(b"x")
    net.flush()
    commit = lead.log.committed
    net.isolate("a")
    lead.read_index(b"r")
    net.flush()
    net.tick(3, only=["a"])
    assert net.reads["a"] == []
    net.heal()
    lead.propose(b"y")
    net.flush()
    net.tick(1, only=["a"])
    assert net.reads["a"] == [ReadState(commit, b"r")]


def test_read_index_single_node_is_immediate() -> None:
    net = Net(["a"])
    lead = net.elect("a")
    lead.read_index(b"q")
    net.flush()
    assert net.reads["a"] == [ReadState(lead.log.committed, b"q")]


def test_reads_pending_when_leadership_is_lost_are_dropped() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("a")
    lead.read_index(b"r")
    net.tick(25, only=["a"])
    assert lead.role == Role.FOLLOWER
    assert net.reads["a"] == [] and net.dropped["a"] == [b"r"]


# ---------------------------------------------------------------------- leadership transfer


def test_transfer_leadership_to_a_caught_up_follower() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    term = lead.term
    lead.transfer_leadership("b")
    net.flush()
    assert net.nodes["b"].role == Role.LEADER and net.nodes["b"].term == term + 1
    assert lead.role == Role.FOLLOWER and lead.lead == "b"


def test_transfer_waits_for_catch_up_and_drops_proposals_meanwhile() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("c")
    for i in range(5):
        lead.propose(b"%d" % i)
    net.flush()
    lead.transfer_leadership("c")
    with pytest.raises(ProposalDropped):
        lead.propose(b"blocked")
    net.flush()
    assert net.nodes["c"].role == Role.FOLLOWER
    net.heal()
    net.tick(2)
    assert net.nodes["c"].role == Role.LEADER
    assert data_of(net, "c")[:5] == [b"%d" % i for i in range(5)]


def test_transfer_aborts_after_an_election_timeout() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("c")
    lead.propose(b"x")
    net.flush()
    lead.transfer_leadership("c")
    assert lead.status().lead_transferee == "c"
    net.tick(11, only=["a", "b"])
    assert lead.role == Role.LEADER and lead.status().lead_transferee == ""
    lead.propose(b"again")


# ---------------------------------------------------------------------- restart and snapshots


def test_restart_from_durable_state_replays_committed_entries() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    for i in range(3):
        lead.propose(b"%d" % i)
    net.flush()
    hs, ents = net.stable["b"]
    assert hs is not None
    b2 = RaftCore(Config("b", seed=7), peers=ConfState(()), hard_state=hs, entries=ents)
    assert (b2.term, b2.vote, b2.log.committed) == (hs.term, hs.vote, hs.commit)
    assert b2.status().conf.voters == ("a", "b", "c")
    rd = b2.ready()
    assert rd.hard_state is None and rd.entries == []
    assert [e.data for e in rd.committed_entries if e.data and e.type == EntryType.NORMAL] == [b"0", b"1", b"2"]


def test_compact_and_send_snapshot_to_a_lagging_follower() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("c")
    for i in range(10):
        lead.propose(b"%d" % i)
    net.flush()
    meta = lead.snapshot_meta(lead.log.applied)
    assert meta.conf == ConfState(("a", "b", "c"))
    lead.compact(Snapshot(meta, b"state"))
    assert lead.log.snap_index == meta.index and lead.log.entries == []
    with pytest.raises(ValueError, match="not applied"):
        lead.compact(Snapshot(SnapshotMeta(meta.index + 5, meta.term, meta.conf), b""))
    net.heal()
    net.tick(3)
    c = net.nodes["c"]
    assert [(s.meta.index, s.data) for s in net.snapshots["c"]] == [(meta.index, b"state")]
    assert c.log.snap_index == meta.index and c.log.committed == lead.log.committed
    assert c.status().conf == ConfState(("a", "b", "c"))
    assert lead.status().progress["c"].state == "REPLICATE"
    lead.propose(b"after")
    net.flush()
    assert data_of(net, "c") == [b"after"]


def test_reads_registered_between_readies_share_one_heartbeat_round() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    for i in range(10):
        lead.read_index(b"r%d" % i)
    rd = lead.ready()
    assert [m.type for m in rd.messages] == [MsgType.HEARTBEAT, MsgType.HEARTBEAT]
    lead.advance(rd)
    for m in rd.messages:
        net.nodes[m.to].step(m)
    net.flush()
    assert [r.context for r in net.reads["a"]] == [b"r%d" % i for i in range(10)]
