"""A tester in the style of MIT 6.5840's Raft lab ``config.go``, on top of the simulator.

Time is in ticks (election timeout 10-20 ticks, heartbeats every tick); the
lab's ``RaftElectionTimeout`` (1 s) is ``ELECTION`` ticks. ``one`` submits a
command to whichever live, connected node accepts it and waits until
``expected`` nodes have applied it at the same index.
"""

from __future__ import annotations

from faultlab.nodes.raft.core import NotLeader, ProposalDropped
from faultlab.nodes.raft.messages import MsgType, Role
from tests.sim.simulator import NetProfile, SimNode, Simulator

__all__ = ["ELECTION", "REQUESTS", "Lab"]

ELECTION = 20.0
REQUESTS = (MsgType.APP, MsgType.HEARTBEAT, MsgType.VOTE, MsgType.PRE_VOTE, MsgType.SNAP, MsgType.TIMEOUT_NOW)


class Lab:
    def __init__(
        self,
        n: int,
        seed: int = 1,
        *,
        reliable: bool = True,
        snapshot_every: int = 0,
        long_delays: bool = False,
        **kwargs: object,
    ) -> None:
        net = NetProfile.reliable() if reliable else NetProfile.unreliable()
        if long_delays:
            net.long_delay = 0.2
            net.long_delay_max = 15.0
        self.sim = Simulator(seed, n, net=net, snapshot_every=snapshot_every, **kwargs)  # type: ignore[arg-type]
        self.ids = list(self.sim.nodes)
        self.n = n
        self.rng = self.sim.rng
        self._next_start = 0

    # ------------------------------------------------------------------ plumbing

    def node(self, i: int) -> SimNode:
        return self.sim.nodes[self.ids[i]]

    def up(self, i: int) -> bool:
        """Alive and connected: the lab's ``connected[i]``."""
        node = self.node(i)
        return node.alive and self.sim.connected(node.id)

    def sleep(self, ticks: float) -> None:
        self.sim.run_for(ticks)

    def disconnect(self, i: int) -> None:
        self.sim.disconnect(self.ids[i])

    def connect(self, i: int) -> None:
        self.sim.connect(self.ids[i])

    def crash(self, i: int) -> None:
        self.sim.crash(self.ids[i])

    def start1(self, i: int) -> None:
        self.sim.restart(self.ids[i])

    def set_unreliable(self, unreliable: bool) -> None:
        self.sim.net = NetProfile.unreliable() if unreliable else NetProfile.reliable()

    def start(self, i: int, cmd: bytes) -> tuple[int, int, bool]:
        """Raft.Start: (index, term, is_leader)."""
        node = self.node(i)
        if not node.alive:
            return -1, -1, False
        try:
            index, term = node.core.propose(cmd)
        except (NotLeader, ProposalDropped):
            return -1, node.core.term, False
        self.sim._after(node)
        return index, term, True

    def requests(self) -> int:
        return sum(self.sim.sent[t] for t in REQUESTS)

    # ------------------------------------------------------------------ checks

    def check_one_leader(self) -> int:
        for _ in range(10):
            self.sleep(self.rng.uniform(9.0, 11.0))
            by_term: dict[int, list[int]] = {}
            for i in range(self.n):
                if self.up(i) and self.node(i).core.role == Role.LEADER:
                    by_term.setdefault(self.node(i).core.term, []).append(i)
            for term, leaders in by_term.items():
                assert len(leaders) == 1, f"term {term} has {len(leaders)} (>1) leaders"
            if by_term:
                return by_term[max(by_term)][0]
        raise AssertionError("expected one leader, got none")

    def check_terms(self) -> int:
        term = -1
        for i in range(self.n):
            if self.up(i):
                t = self.node(i).core.term
                if term == -1:
                    term = t
                assert t == term, "servers disagree on term"
        return term

    def check_no_leader(self) -> None:
        for i in range(self.n):
            if self.up(i):
                assert self.node(i).core.role != Role.LEADER, f"expected no leader among connected servers, {i} is"

    def n_committed(self, index: int) -> tuple[int, bytes | None]:
        count, cmd = 0, None
        for node in self.sim.nodes.values():
            data = node.applied_log.get(index)
            if data is None:
                continue
            if count > 0:
                assert data == cmd, f"committed values do not match: index {index}, {cmd!r}, {data!r}"
            count += 1
            cmd = data
        return count, cmd

    def wait(self, index: int, n: int, start_term: int) -> bytes | None:
        to = 0.5
        for _ in range(30):
            nd, _ = self.n_committed(index)
            if nd >= n:
                break
            self.sleep(to)
            if to < 20:
                to *= 2
            if start_term > -1:
                for i in range(self.n):
                    if self.node(i).alive and self.node(i).core.term > start_term:
                        return None
        nd, cmd = self.n_committed(index)
        assert nd >= n, f"only {nd} decided for index {index}; wanted {n}"
        return cmd

    def one(self, cmd: bytes, expected: int, retry: bool = False) -> int:
        t0 = self.sim.now
        while self.sim.now - t0 < 10 * ELECTION:
            index = -1
            for _ in range(self.n):
                self._next_start = (self._next_start + 1) % self.n
                if self.up(self._next_start):
                    idx, _, ok = self.start(self._next_start, cmd)
                    if ok:
                        index = idx
                        break
            if index != -1:
                t1 = self.sim.now
                while self.sim.now - t1 < 2 * ELECTION:
                    nd, got = self.n_committed(index)
                    if nd > 0 and nd >= expected and got == cmd:
                        return index
                    self.sleep(0.5)
                assert retry, f"one({cmd!r}) failed to reach agreement"
            else:
                self.sleep(2.5)
        raise AssertionError(f"one({cmd!r}) failed to reach agreement")
