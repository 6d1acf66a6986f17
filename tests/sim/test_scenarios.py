"""Scenario tests ported from the MIT 6.5840 Raft lab (3A election, 3B agreement,
3C persistence, 3D snapshots), run on the deterministic simulator.

Indices differ from the lab: a new cluster's log starts with one bootstrap
CONF_CHANGE entry per voter and each new leader appends a no-op, so tests
compare indices relative to earlier ones instead of to constants.
"""

from __future__ import annotations

import pytest

from faultlab.nodes.raft.messages import MsgType
from tests.sim.lab import ELECTION, Lab


def cmd(x: int) -> bytes:
    return str(x).encode()


# ---------------------------------------------------------------------- 3A: election


def test_initial_election_3a() -> None:
    lab = Lab(3)
    lab.check_one_leader()
    lab.sleep(2.5)
    term1 = lab.check_terms()
    assert term1 >= 1
    lab.sleep(2 * ELECTION)
    assert lab.check_terms() == term1, "term changed even though there were no failures"
    lab.check_one_leader()


def test_reelection_3a() -> None:
    lab = Lab(3)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    lab.check_one_leader()
    lab.connect(leader1)
    leader2 = lab.check_one_leader()
    lab.disconnect(leader2)
    lab.disconnect((leader2 + 1) % 3)
    lab.sleep(2 * ELECTION)
    lab.check_no_leader()
    lab.connect((leader2 + 1) % 3)
    lab.check_one_leader()
    lab.connect(leader2)
    lab.check_one_leader()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_elections_3a(seed: int) -> None:
    lab = Lab(7, seed)
    lab.check_one_leader()
    for _ in range(10):
        i1, i2, i3 = (lab.rng.randrange(7) for _ in range(3))
        lab.disconnect(i1)
        lab.disconnect(i2)
        lab.disconnect(i3)
        lab.check_one_leader()
        lab.connect(i1)
        lab.connect(i2)
        lab.connect(i3)
    lab.check_one_leader()


# ---------------------------------------------------------------------- 3B: agreement


def test_basic_agree_3b() -> None:
    lab = Lab(3)
    prev = lab.one(cmd(1), 3)
    for i in range(2, 5):
        nd, _ = lab.n_committed(prev + 1)
        assert nd == 0, "some have committed before Start()"
        assert lab.one(cmd(i * 100), 3) == prev + 1
        prev += 1


def test_follower_failure_3b() -> None:
    lab = Lab(3)
    lab.one(cmd(101), 3)
    leader1 = lab.check_one_leader()
    lab.disconnect((leader1 + 1) % 3)
    lab.one(cmd(102), 2)
    lab.sleep(ELECTION)
    lab.one(cmd(103), 2)
    leader2 = lab.check_one_leader()
    lab.disconnect((leader2 + 1) % 3)
    lab.disconnect((leader2 + 2) % 3)
    index, _, ok = lab.start(leader2, cmd(104))
    assert ok, "leader rejected Start()"
    lab.sleep(2 * ELECTION)
    nd, _ = lab.n_committed(index)
    assert nd == 0, f"{nd} committed but no majority"


def test_leader_failure_3b() -> None:
    lab = Lab(3)
    lab.one(cmd(101), 3)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    lab.one(cmd(102), 2)
    lab.sleep(ELECTION)
    lab.one(cmd(103), 2)
    leader2 = lab.check_one_leader()
    lab.disconnect(leader2)
    for i in range(3):
        lab.start(i, cmd(104))
    lab.sleep(2 * ELECTION)
    index = max(lab.node(i).core.log.last_index() for i in range(3))
    nd, _ = lab.n_committed(index)
    assert nd == 0, f"{nd} committed but no majority"


def test_fail_agree_3b() -> None:
    lab = Lab(3)
    lab.one(cmd(101), 3)
    leader = lab.check_one_leader()
    lab.disconnect((leader + 1) % 3)
    lab.one(cmd(102), 2)
    lab.one(cmd(103), 2)
    lab.sleep(ELECTION)
    lab.one(cmd(104), 2)
    lab.one(cmd(105), 2)
    lab.connect((leader + 1) % 3)
    lab.one(cmd(106), 3, True)
    lab.sleep(ELECTION)
    lab.one(cmd(107), 3, True)


def test_fail_no_agree_3b() -> None:
    lab = Lab(5)
    first = lab.one(cmd(10), 5)
    leader = lab.check_one_leader()
    for k in (1, 2, 3):
        lab.disconnect((leader + k) % 5)
    index, _, ok = lab.start(leader, cmd(20))
    assert ok, "leader rejected Start()"
    assert index == first + 1, f"expected index {first + 1}, got {index}"
    lab.sleep(2 * ELECTION)
    nd, _ = lab.n_committed(index)
    assert nd == 0, f"{nd} committed but no majority"
    for k in (1, 2, 3):
        lab.connect((leader + k) % 5)
    leader2 = lab.check_one_leader()
    index2, _, ok2 = lab.start(leader2, cmd(30))
    assert ok2, "leader2 rejected Start()"
    assert first + 1 <= index2 <= first + 3, f"unexpected index {index2}"
    lab.one(cmd(1000), 5, True)


def test_rejoin_3b() -> None:
    lab = Lab(3)
    lab.one(cmd(101), 3, True)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    for c in (102, 103, 104):
        lab.start(leader1, cmd(c))
    lab.one(cmd(103), 2, True)
    leader2 = lab.check_one_leader()
    lab.disconnect(leader2)
    lab.connect(leader1)
    lab.one(cmd(104), 2, True)
    lab.connect(leader2)
    lab.one(cmd(105), 3, True)


def test_backup_3b() -> None:
    """Fast back-off over 50-entry divergent logs must bring everyone back in a few round trips."""
    lab = Lab(5)
    lab.one(cmd(lab.rng.getrandbits(31)), 5, True)
    leader1 = lab.check_one_leader()
    for k in (2, 3, 4):
        lab.disconnect((leader1 + k) % 5)
    for _ in range(50):
        lab.start(leader1, cmd(lab.rng.getrandbits(31)))
    lab.sleep(ELECTION / 2)
    lab.disconnect((leader1 + 0) % 5)
    lab.disconnect((leader1 + 1) % 5)
    for k in (2, 3, 4):
        lab.connect((leader1 + k) % 5)
    for _ in range(50):
        lab.one(cmd(lab.rng.getrandbits(31)), 3, True)
    leader2 = lab.check_one_leader()
    other = (leader1 + 2) % 5
    if leader2 == other:
        other = (leader2 + 1) % 5
    lab.disconnect(other)
    for _ in range(50):
        lab.start(leader2, cmd(lab.rng.getrandbits(31)))
    lab.sleep(ELECTION / 2)
    for i in range(5):
        lab.disconnect(i)
    lab.connect((leader1 + 0) % 5)
    lab.connect((leader1 + 1) % 5)
    lab.connect(other)
    for _ in range(50):
        lab.one(cmd(lab.rng.getrandbits(31)), 3, True)
    for i in range(5):
        lab.connect(i)
    before = lab.sim.sent[MsgType.APP]
    lab.one(cmd(lab.rng.getrandbits(31)), 5, True)
    appends = lab.sim.sent[MsgType.APP] - before
    assert appends < 400, f"{appends} appends to reconcile 50-entry divergences: back-off is not fast"


def test_count_3b() -> None:
    """Message economy: elections, agreement and idleness each stay within a small budget."""
    lab = Lab(3)
    lab.check_one_leader()
    votes = lab.sim.sent[MsgType.VOTE] + lab.sim.sent[MsgType.PRE_VOTE]
    assert 1 <= votes <= 12, f"too many or few vote requests ({votes}) to elect the initial leader"
    for _attempt in range(5):
        leader = lab.check_one_leader()
        t0, total1 = lab.sim.now, lab.requests()
        iters = 10
        start, term, ok = lab.start(leader, cmd(1))
        if not ok:
            continue
        cmds = []
        failed = False
        for i in range(1, iters + 2):
            x = lab.rng.getrandbits(31)
            cmds.append(x)
            index1, term1, ok = lab.start(leader, cmd(x))
            if term1 != term or not ok:
                failed = True
                break
            assert index1 == start + i, "Start() failed"
        if failed:
            continue
        for i in range(1, iters + 1):
            got = lab.wait(start + i, 3, term)
            if got is None:
                failed = True
                break
            assert got == cmd(cmds[i - 1]), f"wrong value {got!r} committed for index {start + i}"
        if failed or any(lab.node(j).core.term != term for j in range(3)):
            continue
        sent = lab.requests() - total1
        # Per follower: one append carrying entries and one carrying the commit index per
        # command at most, plus one heartbeat per tick.
        budget = (iters + 2) * 2 * 2 + 2 * (lab.sim.now - t0 + 1)
        assert sent <= budget, f"too many requests ({sent} > {budget:.0f}) for {iters} agreements"
        break
    else:
        raise AssertionError("term changed too often")
    lab.sleep(ELECTION)
    total3 = lab.requests()
    lab.sleep(ELECTION)
    idle = lab.requests() - total3
    assert idle <= 2 * ELECTION + 2, f"too many requests ({idle}) in {ELECTION:g} idle ticks"


# ---------------------------------------------------------------------- 3C: persistence


def test_persist1_3c() -> None:
    lab = Lab(3)
    lab.one(cmd(11), 3, True)
    for i in range(3):
        lab.start1(i)
    for i in range(3):
        lab.disconnect(i)
        lab.connect(i)
    lab.one(cmd(12), 3, True)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    lab.start1(leader1)
    lab.connect(leader1)
    lab.one(cmd(13), 3, True)
    leader2 = lab.check_one_leader()
    lab.disconnect(leader2)
    lab.one(cmd(14), 2, True)
    lab.start1(leader2)
    lab.connect(leader2)
    lab.wait(lab.one(cmd(15), 3, True), 3, -1)
    i3 = (lab.check_one_leader() + 1) % 3
    lab.disconnect(i3)
    lab.one(cmd(15), 2, True)
    lab.start1(i3)
    lab.connect(i3)
    lab.one(cmd(16), 3, True)


def test_persist2_3c() -> None:
    lab = Lab(5)
    index = 1
    for _ in range(5):
        lab.one(cmd(10 + index), 5, True)
        index += 1
        leader1 = lab.check_one_leader()
        lab.disconnect((leader1 + 1) % 5)
        lab.disconnect((leader1 + 2) % 5)
        lab.one(cmd(10 + index), 3, True)
        index += 1
        for k in (0, 3, 4):
            lab.disconnect((leader1 + k) % 5)
        lab.start1((leader1 + 1) % 5)
        lab.start1((leader1 + 2) % 5)
        lab.connect((leader1 + 1) % 5)
        lab.connect((leader1 + 2) % 5)
        lab.sleep(ELECTION)
        lab.start1((leader1 + 3) % 5)
        lab.connect((leader1 + 3) % 5)
        lab.one(cmd(10 + index), 3, True)
        index += 1
        lab.connect((leader1 + 4) % 5)
        lab.connect((leader1 + 0) % 5)
    lab.one(cmd(1000), 5, True)


def test_persist3_3c() -> None:
    lab = Lab(3)
    lab.one(cmd(101), 3, True)
    leader = lab.check_one_leader()
    lab.disconnect((leader + 2) % 3)
    lab.one(cmd(102), 2, True)
    lab.crash((leader + 0) % 3)
    lab.crash((leader + 1) % 3)
    lab.connect((leader + 2) % 3)
    lab.start1((leader + 0) % 3)
    lab.connect((leader + 0) % 3)
    lab.one(cmd(103), 2, True)
    lab.start1((leader + 1) % 3)
    lab.connect((leader + 1) % 3)
    lab.one(cmd(104), 3, True)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_figure8_3c(seed: int) -> None:
    """Leaders crash right after appending; entries of old terms must never be committed by counting."""
    lab = Lab(5, seed)
    lab.one(cmd(lab.rng.getrandbits(16)), 1, True)
    nup = 5
    for _ in range(300):
        leader = -1
        for i in range(5):
            if lab.node(i).alive:
                _, _, ok = lab.start(i, cmd(lab.rng.getrandbits(16)))
                if ok:
                    leader = i
        if lab.rng.randrange(1000) < 100:
            lab.sleep(lab.rng.uniform(0, ELECTION / 2))
        else:
            lab.sleep(lab.rng.uniform(0, 0.65))
        if leader != -1:
            lab.crash(leader)
            nup -= 1
        if nup < 3:
            s = lab.rng.randrange(5)
            if not lab.node(s).alive:
                lab.start1(s)
                nup += 1
    for i in range(5):
        if not lab.node(i).alive:
            lab.start1(i)
    lab.one(cmd(lab.rng.getrandbits(16)), 5, True)


def test_unreliable_agree_3c() -> None:
    lab = Lab(5, reliable=False)
    for it in range(1, 30):
        lab.one(cmd(100 + it), 1, True)
    lab.set_unreliable(False)
    lab.one(cmd(100), 5, True)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_figure8_unreliable_3c(seed: int) -> None:
    lab = Lab(5, seed, reliable=False, long_delays=True)
    lab.one(cmd(lab.rng.getrandbits(16)), 1, True)
    nup = 5
    for it in range(500):
        if it == 200:
            lab.sim.net.long_delay = 0.3
        leader = -1
        for i in range(5):
            _, _, ok = lab.start(i, cmd(lab.rng.getrandbits(16)))
            if ok and lab.up(i):
                leader = i
        if lab.rng.randrange(1000) < 100:
            lab.sleep(lab.rng.uniform(0, ELECTION / 2))
        else:
            lab.sleep(lab.rng.uniform(0, 0.65))
        if leader != -1 and lab.rng.randrange(1000) < 500:
            lab.disconnect(leader)
            nup -= 1
        if nup < 3:
            s = lab.rng.randrange(5)
            if not lab.sim.connected(lab.ids[s]):
                lab.connect(s)
                nup += 1
    for i in range(5):
        lab.connect(i)
    lab.set_unreliable(False)
    lab.one(cmd(lab.rng.getrandbits(16)), 5, True)


@pytest.mark.parametrize(("unreliable", "seed"), [(False, 1), (True, 2), (True, 3)])
def test_churn_3c(unreliable: bool, seed: int) -> None:
    """Random crashes, restarts and disconnects under client load; every committed value survives."""
    lab = Lab(5, seed, reliable=not unreliable)
    pending: list[tuple[int, bytes]] = []
    acked: list[tuple[int, bytes]] = []

    def settle() -> None:
        for item in list(pending):
            nd, got = lab.n_committed(item[0])
            if nd and got == item[1]:
                acked.append(item)
                pending.remove(item)

    for _ in range(40):
        for _c in range(3):
            x = cmd(lab.rng.getrandbits(30))
            for i in range(5):
                idx, _, ok = lab.start(i, x)
                if ok:
                    pending.append((idx, x))
                    break
        lab.sleep(lab.rng.uniform(0, 5))
        settle()
        for i in range(5):
            r = lab.rng.randrange(1000)
            if r < 200:
                lab.disconnect(i)
            elif r < 500:
                lab.connect(i)
            elif r < 600:
                lab.crash(i)
            elif r < 700 and not lab.node(i).alive:
                lab.start1(i)
                lab.connect(i)
        lab.sleep(ELECTION * 0.35)
        settle()
    lab.sleep(ELECTION)
    lab.set_unreliable(False)
    for i in range(5):
        if not lab.node(i).alive:
            lab.start1(i)
        lab.connect(i)
    last = lab.one(cmd(lab.rng.getrandbits(30)), 5, True)
    settle()
    assert len(acked) > 10, f"only {len(acked)} commands committed under churn"
    for index, x in acked:
        assert index <= last
        assert lab.wait(index, 5, -1) == x, f"committed value at {index} changed"


# ---------------------------------------------------------------------- 3D: snapshots


def _max_log(lab: Lab) -> int:
    return max(len(lab.node(i).core.log.entries) for i in range(lab.n) if lab.node(i).alive)


def test_snapshot_basic_3d() -> None:
    lab = Lab(3, snapshot_every=9)
    lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
    for _ in range(60):
        lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
        assert _max_log(lab) <= 2 * 9 + 4, f"log grew to {_max_log(lab)} entries despite snapshots"
    assert all(lab.node(i).core.log.snap_index > 0 for i in range(3))


@pytest.mark.parametrize(
    ("disconnect", "reliable", "crash", "seed"),
    [
        (True, True, False, 1),
        (True, False, False, 2),
        (False, True, True, 3),
        (False, False, True, 4),
    ],
    ids=["disconnect", "disconnect-unreliable", "crash", "crash-unreliable"],
)
def test_install_snapshot_3d(disconnect: bool, reliable: bool, crash: bool, seed: int) -> None:
    lab = Lab(3, seed, reliable=reliable, snapshot_every=9)
    lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
    snaps_before = lab.sim.sent[MsgType.SNAP]
    for _ in range(15):
        victim = (lab.check_one_leader() + 1) % 3
        sender = lab.check_one_leader()
        if disconnect:
            lab.disconnect(victim)
            lab.one(cmd(lab.rng.getrandbits(16)), 2, True)
        if crash:
            lab.crash(victim)
            lab.one(cmd(lab.rng.getrandbits(16)), 2, True)
        for _ in range(2 * 9 + 1):
            lab.start(sender, cmd(lab.rng.getrandbits(16)))
        lab.one(cmd(lab.rng.getrandbits(16)), 2, True)
        if disconnect:
            lab.connect(victim)
            lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
        if crash:
            lab.start1(victim)
            lab.connect(victim)
            lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
    assert lab.sim.sent[MsgType.SNAP] > snaps_before, "no follower was ever caught up by a snapshot"


def test_snapshot_all_crash_3d() -> None:
    lab = Lab(3, snapshot_every=9)
    lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
    for _ in range(5):
        for _ in range(2 * 9 + 1):
            lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
        index1 = lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
        for i in range(3):
            lab.crash(i)
        for i in range(3):
            lab.start1(i)
            lab.connect(i)
        index2 = lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
        assert index2 >= index1 + 1, f"index decreased from {index1} to {index2}"


def test_snapshot_init_3d() -> None:
    lab = Lab(3, snapshot_every=9)
    lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
    for _ in range(2 * 9 + 1):
        lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
    for i in range(3):
        lab.crash(i)
    for i in range(3):
        lab.start1(i)
    lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
    for i in range(3):
        lab.crash(i)
    for i in range(3):
        lab.start1(i)
    lab.one(cmd(lab.rng.getrandbits(16)), 3, True)
