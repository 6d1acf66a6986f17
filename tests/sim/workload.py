"""One randomized simulation run per seed: faults, membership churn, clients, then checks.

``run_seed(seed)`` derives everything from the seed: cluster size (3, 5 or 7),
network weather, Raft options, fault schedule and client workload. A chaos
phase injects crashes (losing un-flushed state), symmetric and asymmetric
partitions, leader isolation, leadership transfers and membership changes
(add learner, promote, remove) while clients run puts, gets through the log and
ReadIndex gets. A recovery phase heals everything and demands liveness: a
leader, a fresh write committed, all members converged. The recorded history
must be linearizable. Any failure raises with the seed in the message.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from faultlab.nodes.raft.core import NotLeader, ProposalDropped
from faultlab.nodes.raft.messages import ConfChange, ConfChangeType
from faultlab.operator.chaos.checks.linearizability import check_linearizable
from faultlab.operator.chaos.history import Outcome
from tests.sim.simulator import ClientOp, InvariantViolation, NetProfile, Simulator

__all__ = ["SeedReport", "replay_command", "run_seed"]

KEYS = ("a", "b", "c", "d")


def replay_command(seed: int) -> str:
    return f"FAULTLAB_SIM_SEED={seed} .venv/bin/python -m pytest tests/sim/test_random.py -k replay -s"


@dataclass
class SeedReport:
    seed: int
    nodes: int
    steps: int
    ops: int
    ok_ops: int
    leaders: int
    final_commit: int


class SimFailure(AssertionError):
    pass


def _params(seed: int) -> tuple[random.Random, dict[str, object]]:
    rng = random.Random(seed * 7919 + 17)
    net = NetProfile(
        drop=rng.choice((0.0, 0.0, 0.02, 0.08, 0.2)),
        dup=rng.choice((0.0, 0.02, 0.1)),
        min_delay=0.05,
        max_delay=rng.choice((0.3, 0.8)),
        long_delay=rng.choice((0.0, 0.03, 0.15)),
        long_delay_max=rng.choice((3.0, 12.0)),
        snap_report=rng.choice((1.0, 0.5, 0.0)),
    )
    opts: dict[str, object] = {
        "voters": (3, 5, 7)[seed % 3],
        "net": net,
        "election_tick": 10,
        "heartbeat_tick": rng.choice((1, 2, 3)),
        "pre_vote": rng.random() > 0.15,
        "check_quorum": rng.random() > 0.15,
        "snapshot_every": rng.choice((0, 5, 20, 60)),
        "max_entries_per_msg": rng.choice((1, 3, 64)),
        "max_inflight": rng.choice((1, 4, 64)),
        "flush_delay": rng.choice((0.0, 0.1, 0.5)),
    }
    # A removed member is shut down (as the operator deletes its pod) unless pre-vote and
    # check-quorum are both on, where a lingering removed node must not disrupt the cluster.
    opts["leader_early_send"] = rng.random() < 0.5
    opts["retire_removed"] = not (opts["pre_vote"] and opts["check_quorum"]) or rng.random() < 0.5
    return rng, opts


class _Run:
    def __init__(self, seed: int, chaos: float, recovery: float, trace: bool) -> None:
        self.seed = seed
        self.rng, opts = _params(seed)
        self.sim = Simulator(seed, trace=trace, **opts)  # type: ignore[arg-type]
        self.chaos_end = chaos
        self.end = chaos + recovery
        self.clients = [f"c{i}" for i in range(3)]
        self.fault_rate = self.rng.choice((8.0, 20.0, 60.0))
        self.next_id = len(self.sim.nodes) + 1
        self.value = 0
        self.sim.on_complete.append(self._on_complete)
        self.stop_clients = False

    # ---------------------------------------------------------------- clients

    def _target(self) -> str:
        sim = self.sim
        lead = sim.leader()
        if lead is not None and self.rng.random() < 0.85:
            return lead.id
        return self.rng.choice([n for n in sim.nodes if not sim.nodes[n].removed])

    def _client_step(self, client: str) -> None:
        if self.stop_clients:
            return
        sim, rng = self.sim, self.rng
        key = rng.choice(KEYS)
        r = rng.random()
        nid = self._target()
        op: ClientOp | None
        if r < 0.5:
            self.value += 1
            op = sim.client_put(client, nid, key, f"{client}-{self.value}")
        elif r < 0.65:
            op = sim.client_get(client, nid, key, via_log=True)
        else:
            op = sim.client_get(client, nid, key)
        if op is None:
            sim.call_at(sim.now + rng.uniform(0.5, 2.0), lambda: self._client_step(client))

    def _on_complete(self, op: ClientOp, outcome: Outcome) -> None:
        delay = self.rng.uniform(0.0, 2.0)
        self.sim.call_at(self.sim.now + delay, lambda: self._client_step(op.client))

    # ---------------------------------------------------------------- faults

    def _fault(self) -> None:
        sim, rng = self.sim, self.rng
        if sim.now >= self.chaos_end:
            return
        sim.call_at(sim.now + rng.expovariate(1.0 / self.fault_rate), self._fault)
        live = [n for n in sim.nodes.values() if n.alive]
        names = [n.id for n in sim.nodes.values() if not n.removed]
        lead = sim.leader()
        r = rng.random()
        if r < 0.15 and live:
            victim = lead if lead is not None and rng.random() < 0.5 else rng.choice(live)
            sim.crash(victim.id)
            sim.call_at(sim.now + rng.uniform(2.0, 60.0), lambda nid=victim.id: sim.restart(nid))
        elif r < 0.22 and live:
            self._bounce_storm(rng.randrange(3, 12))
        elif r < 0.3:
            rng.shuffle(names)
            k = rng.randrange(1, max(2, len(names)))
            sim.partition(names[:k], names[k:])
            sim.call_at(sim.now + rng.uniform(5.0, 60.0), sim.heal)
        elif r < 0.4 and lead is not None:
            sim.disconnect(lead.id)
            sim.call_at(sim.now + rng.uniform(5.0, 50.0), lambda nid=lead.id: sim.connect(nid))
        elif r < 0.5 and len(names) > 1:
            for _ in range(rng.randrange(1, 4)):
                a, b = rng.sample(names, 2)
                sim.block(a, b)
            sim.call_at(sim.now + rng.uniform(5.0, 60.0), sim.heal)
        elif r < 0.6:
            sim.heal()
        elif r < 0.7 and lead is not None:
            voters = [v for v in lead.core.voters if v != lead.id]
            if voters:
                target = rng.choice(voters)
                sim._log(f"transfer {lead.id} -> {target}")
                lead.core.transfer_leadership(target)
                sim._after(lead)
        elif lead is not None and r < 0.85:
            self._membership(lead.id)
        else:
            at = sim.now
            for _ in range(rng.randrange(2, 7)):
                at += rng.uniform(0.1, 3.0)
                sim.call_at(at, self._membership_now)

    def _bounce_storm(self, count: int) -> None:
        """Crash-restart random nodes in quick succession, often mid-election (a vote in flight)."""
        sim, rng = self.sim, self.rng
        at = sim.now
        for _ in range(count):
            at += rng.uniform(0.1, 4.0)

            def bounce() -> None:
                live = [n.id for n in sim.nodes.values() if n.alive]
                if live:
                    nid = rng.choice(live)
                    sim.crash(nid)
                    sim.call_at(sim.now + rng.uniform(0.05, 1.5), lambda: sim.restart(nid))

            sim.call_at(at, bounce)

    def _membership_now(self) -> None:
        lead = self.sim.leader()
        if lead is not None and self.sim.now < self.chaos_end:
            self._membership(lead.id)

    def _membership(self, lead_id: str) -> None:
        sim, rng = self.sim, self.rng
        lead = sim.nodes[lead_id]
        core = lead.core
        voters, learners = core.voters, core.learners
        st = core.status()
        r = rng.random()
        cc: ConfChange | None = None
        if r < 0.35 and len(voters) + len(learners) < 9 and len(learners) < 2:
            nid = f"n{self.next_id}"
            self.next_id += 1
            sim.add_node(nid)
            cc = ConfChange(ConfChangeType.ADD_LEARNER, nid)
        elif r < 0.7 and learners:
            target = rng.choice(learners)
            pr = st.progress.get(target)
            if pr is not None and pr.match + 5 >= st.commit and len(voters) < 9:
                cc = ConfChange(ConfChangeType.PROMOTE_LEARNER, target)
        else:
            pool = [v for v in voters if len(voters) > 3] + list(learners)
            if pool:
                cc = ConfChange(ConfChangeType.REMOVE_MEMBER, rng.choice(pool))
        if cc is None:
            return
        try:
            core.propose_conf_change(cc)
        except (NotLeader, ProposalDropped):
            return
        sim._log(f"{lead_id} proposes {cc.type.name} {cc.node_id}")
        sim._after(lead)

    # ---------------------------------------------------------------- phases

    def _recover(self) -> None:
        sim = self.sim
        sim.net = NetProfile.reliable()
        sim.heal()
        for nid in sorted(sim.isolated):
            sim.connect(nid)
        for n in sim.nodes.values():
            if not n.alive and not n.removed:
                sim.restart(n.id)

    def fail(self, text: str) -> SimFailure:
        return SimFailure(f"seed {self.seed}: {text}\n  replay: {replay_command(self.seed)}")

    def run(self) -> SeedReport:
        sim, rng = self.sim, self.rng
        for c in self.clients:
            sim.call_at(rng.uniform(0.0, 20.0), lambda c=c: self._client_step(c))
        sim.call_at(rng.uniform(10.0, 30.0), self._fault)
        sim.call_at(self.chaos_end, self._recover)
        try:
            sim.run_until(self.end - 40.0)
            self.stop_clients = True
            self._check_liveness()
        except InvariantViolation as exc:
            raise self.fail(str(exc)) from exc
        ops = sim.history.operations()
        result = check_linearizable(ops, timeout_s=30.0)
        if not result.ok:
            raise self.fail(f"history is {result.verdict}: {result.summary()}")
        lead = sim.leader()
        return SeedReport(
            self.seed,
            len(sim.initial.voters),
            sim.steps,
            len(ops),
            sum(1 for o in ops if o.outcome is Outcome.OK),
            len(sim.leader_of_term),
            lead.core.log.committed if lead else 0,
        )

    def _check_liveness(self) -> None:
        sim = self.sim
        lead = sim.leader()
        if lead is None:
            raise self.fail(f"no leader {self.end - 40.0 - self.chaos_end:.0f} ticks after healing")
        done: list[Outcome] = []
        sim.on_complete.append(lambda op, outcome: done.append(outcome) if op.client == "final" else None)
        op = sim.client_put("final", lead.id, "final", "v")
        if op is None:
            raise self.fail(f"leader {lead.id} refused the final write")
        sim.run_until(self.end)
        if done != [Outcome.OK]:
            raise self.fail(f"the final write on healed cluster did not commit in 40 ticks: {done}")
        for _ in range(40):
            lead = sim.leader()
            if lead is None:
                raise self.fail("lost the leader on a healed, reliable network")
            conf = lead.core.status().conf
            commit = lead.core.log.committed
            lagging = {
                m: (sim.nodes[m].applied, sim.nodes[m].alive)
                for m in conf.voters + conf.learners
                if sim.nodes[m].applied != commit
            }
            if not lagging:
                return
            sim.run_for(10.0)
        raise self.fail(f"members did not converge on commit {commit} of {lead.id} in 400 ticks: {lagging}")


def run_seed(seed: int, *, chaos: float = 300.0, recovery: float = 120.0, trace: bool = False) -> SeedReport:
    """Run one seed; raises AssertionError (with the replay command) on any failure."""
    run = _Run(seed, chaos, recovery, trace)
    try:
        return run.run()
    except AssertionError:
        if trace and run.sim.trace is not None:
            tail = int(os.environ.get("FAULTLAB_SIM_TRACE_TAIL", "200"))
            print("\n".join(run.sim.trace[-tail:]))
        raise
