"""Target selection and blast radius: property tests over random clusters, roles and selections."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faultlab.operator.api import ChaosExperiment
from faultlab.operator.chaos.engine import Engine, ExperimentRejected
from faultlab.operator.chaos.journal import ExperimentState, MemoryStateStore
from faultlab.operator.chaos.probes import MemberStatus
from faultlab.operator.chaos.selection import (
    UNAVAILABILITY_FAULTS,
    BlastRadius,
    Candidate,
    PlannedFault,
    SelectionError,
    StepPlan,
    check_blast_radius,
    quorum_tolerance,
    select_targets,
    target_count,
)
from faultlab.operator.runtime.base import Member
from tests.unit.test_chaos_fakes import FakeRuntime

FAULTS = ["partition", "kill", "pause", "crash", "delay", "loss", "diskFill", "clockSkew", "cpuBurn", "corruption"]


@st.composite
def clusters(draw: st.DrawFn) -> list[Candidate]:
    n = draw(st.integers(1, 9))
    leader = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    return [Candidate(f"n{i + 1}", role="leader" if i == leader else "follower") for i in range(n)]


@st.composite
def selections(draw: st.DrawFn) -> dict[str, object]:
    mode = draw(st.sampled_from(["one", "fixed", "percent", "all"]))
    value: float | None = None
    if mode == "fixed":
        value = draw(st.integers(1, 9))
    elif mode == "percent":
        value = draw(st.sampled_from([10, 25, 34, 50, 67, 100]))
    return {"role": draw(st.sampled_from(["leader", "follower", "any"])), "mode": mode, "value": value}


@settings(max_examples=150, deadline=None)
@given(cluster=clusters(), sel=selections(), seed=st.integers(0, 2**32))
def test_selection_respects_role_and_count(cluster: list[Candidate], sel: dict[str, object], seed: int) -> None:
    role, mode, value = str(sel["role"]), str(sel["mode"]), sel["value"]
    try:
        chosen = select_targets(cluster, role, mode, value, random.Random(seed))  # type: ignore[arg-type]
    except SelectionError as exc:
        assert "eligible" in str(exc)
        return
    ids = [c.id for c in chosen]
    assert len(ids) == len(set(ids))
    if role != "any":
        assert all(c.role == role for c in chosen)
    eligible = [c for c in cluster if role == "any" or c.role == role]
    assert len(chosen) == target_count(mode, value, len(eligible))  # type: ignore[arg-type]
    again = select_targets(cluster, role, mode, value, random.Random(seed))  # type: ignore[arg-type]
    assert [c.id for c in again] == ids, "a seed must replay the same selection"


@settings(max_examples=150, deadline=None)
@given(cluster=clusters(), sels=st.lists(selections(), min_size=1, max_size=3),
       types=st.lists(st.sampled_from(FAULTS), min_size=3, max_size=3),
       max_targets=st.one_of(st.none(), st.integers(1, 9)), max_percent=st.one_of(st.none(), st.integers(1, 100)),
       allow=st.booleans(), seed=st.integers(0, 2**32))
def test_an_accepted_plan_never_exceeds_the_blast_radius(
    cluster: list[Candidate], sels: list[dict[str, object]], types: list[str], max_targets: int | None,
    max_percent: int | None, allow: bool, seed: int,
) -> None:
    rng = random.Random(seed)
    members = [c.id for c in cluster]
    faults = []
    for i, sel in enumerate(sels):
        try:
            chosen = select_targets(cluster, str(sel["role"]), str(sel["mode"]), sel["value"], rng)  # type: ignore[arg-type]
        except SelectionError:
            continue
        ids = [c.id for c in chosen]
        faults.append(PlannedFault(i, f"f{i}", types[i], ids, new=ids, peers="others"))
    step = StepPlan(0, faults)
    radius = BlastRadius(max_targets, max_percent, allow)
    problems = check_blast_radius(step, members, radius)
    if problems:
        return
    hit = step.targets()
    n = len(members)
    if max_targets is not None:
        assert len(hit) <= max_targets
    if max_percent is not None:
        assert len(hit) * 100 <= max_percent * n
    if not allow:
        down: set[str] = set()
        for f in faults:
            if f.type not in UNAVAILABILITY_FAULTS:
                continue
            if f.type == "partition":
                rest = set(members) - set(f.targets)
                down |= set(f.targets) if len(f.targets) <= len(rest) else rest
            else:
                down |= set(f.targets)
        assert len(down) <= quorum_tolerance(n)


def _engine(doc: dict[str, object], n: int, leader: str | None = "n1", seed: int = 7) -> Engine:
    exp = ChaosExperiment.model_validate(doc)
    rt = FakeRuntime([f"n{i + 1}" for i in range(n)])
    eng = Engine(exp, rt, MemoryStateStore())
    eng.state = ExperimentState(exp.name, "r1", exp.to_dict(), seed)
    eng.members = {i: Member(i, rt.address(i)) for i in rt.ids}
    eng._statuses = {i: MemberStatus(i, "leader" if i == leader else "follower", 1, leader or "")
                     for i in rt.ids}
    return eng


def _doc(faults: list[dict[str, object]], **spec: object) -> dict[str, object]:
    return {"apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment", "metadata": {"name": "x"},
            "spec": {"target": {"name": "c"}, "faults": faults, "workload": {"enabled": False}, "checks": [],
                     **spec}}


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 9), sel=selections(), ftype=st.sampled_from(FAULTS), allow=st.booleans(),
       max_targets=st.one_of(st.none(), st.integers(1, 9)), steps=st.lists(st.integers(1, 9), max_size=3),
       seed=st.integers(0, 2**31))
def test_engine_plans_stay_within_the_blast_radius(n: int, sel: dict[str, object], ftype: str, allow: bool,
                                                   max_targets: int | None, steps: list[int], seed: int) -> None:
    target: dict[str, object] = {"role": sel["role"], "mode": sel["mode"]}
    if sel["value"] is not None:
        target["value"] = sel["value"]
    radius: dict[str, object] = {"allowQuorumLoss": allow}
    if max_targets is not None:
        radius["maxTargets"] = max_targets
    spec: dict[str, object] = {"blastRadius": radius}
    if steps:
        spec["rollout"] = {"steps": [{"maxTargets": s, "holdSeconds": 1} for s in sorted(steps)]}
    try:
        eng = _engine(_doc([{"name": "f", "type": ftype, "target": target}], **spec), n, seed=seed)
    except ValueError:
        return  # the model rejects it before any engine sees it
    try:
        plan = eng._plan_all(eng._candidates())
    except ExperimentRejected:
        return
    members = sorted(eng.members)
    for step in plan:
        hit = step.targets()
        if max_targets is not None:
            assert len(hit) <= max_targets
        if not allow and ftype in UNAVAILABILITY_FAULTS:
            assert len(step.faults[0].impaired(members)) <= quorum_tolerance(n)
    for a, b in itertools.pairwise(plan):
        assert a.targets() <= b.targets(), "rollout steps only widen"


def test_leader_partition_plan_names_the_leader_and_is_seeded() -> None:
    doc = _doc([{"name": "cut", "type": "partition", "target": {"role": "leader"}}])
    eng = _engine(doc, 3, leader="n2")
    plan = eng._plan_all(eng._candidates())
    assert plan[0].faults[0].targets == ["n2"]
    doc = _doc([{"name": "f", "type": "delay", "target": {"mode": "fixed", "value": 2}}])
    picks = {tuple(_engine(doc, 5, seed=s)._plan_all(_engine(doc, 5, seed=s)._candidates())[0].faults[0].targets)
             for s in range(20)}
    assert len(picks) > 1, "different seeds choose different members"
    a = _engine(doc, 5, seed=3)
    b = _engine(doc, 5, seed=3)
    assert a._plan_all(a._candidates())[0].faults[0].targets == b._plan_all(b._candidates())[0].faults[0].targets


def test_quorum_loss_is_rejected_unless_allowed() -> None:
    members = ["n1", "n2", "n3", "n4", "n5"]
    step = StepPlan(0, [PlannedFault(0, "k", "kill", ["n1", "n2", "n3"], new=["n1", "n2", "n3"])])
    problems = check_blast_radius(step, members, BlastRadius())
    assert problems and "allowQuorumLoss" in problems[0]
    assert not check_blast_radius(step, members, BlastRadius(allow_quorum_loss=True))
    # a minority partition of 2 of 5 is fine, 3 of 5 cut off leaves a minority of 2 on the other side
    assert not check_blast_radius(StepPlan(0, [PlannedFault(0, "p", "partition", ["n1", "n2"])]), members,
                                  BlastRadius())
    # degrading faults do not count against the quorum
    assert not check_blast_radius(StepPlan(0, [PlannedFault(0, "d", "delay", members)]), members, BlastRadius())


def test_no_leader_means_a_leader_selection_is_rejected() -> None:
    eng = _engine(_doc([{"name": "cut", "type": "partition", "target": {"role": "leader"}}]), 3, leader=None)
    with pytest.raises(ExperimentRejected, match="no member with role leader"):
        eng._plan_all(eng._candidates())
