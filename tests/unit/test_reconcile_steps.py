"""The RaftCluster reconciler's decisions: one safe step per pass, from an observed state (no cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from faultlab.operator.api import RaftCluster
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.raftcluster import Observed, RaftClusterReconciler, Step, _conditions
from faultlab.protos.raft.v1 import raft_pb2 as pb

OWNER = b.Owner(name="demo", namespace="lab", uid="u1")


class _NamedCalls:
    """A stand-in Kube whose methods only carry their names (Recorder._k records them)."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            return None
        call.__name__ = name
        return call


class Recorder(RaftClusterReconciler):
    """Records what a pass would do instead of doing it."""

    def __init__(self) -> None:
        super().__init__(kube=_NamedCalls(), events=None, namespace="lab", name="demo")  # type: ignore[arg-type]
        self.actions: list[tuple[str, ...]] = []

    async def _admin(self, obs: Observed, call: str, request: Any, timeout: float = 10.0) -> Any:
        self.actions.append((call, getattr(request, "id", "") or getattr(request, "target_id", "")))

    async def _create_pod(self, rc: RaftCluster, owner: b.Owner, member: str, peers: set[str], join: bool) -> None:
        self.actions.append(("create", member, "join" if join else "boot", ",".join(sorted(peers))))

    async def _delete_pod(self, pod: dict[str, Any], grace: int | None = None) -> None:
        self.actions.append(("delete", pod["metadata"]["labels"][b.L_MEMBER]))

    async def _condemn(self, pod: dict[str, Any]) -> None:
        self.actions.append(("condemn", pod["metadata"]["labels"][b.L_MEMBER]))

    async def _write_phase(self, body: dict[str, Any], phase: str) -> None:
        self.actions.append(("phase", phase))

    async def _k(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.actions.append(("kube", getattr(fn, "__name__", str(fn))))


def cluster(replicas: int = 3, **spec: Any) -> RaftCluster:
    return RaftCluster.model_validate({"metadata": {"name": "demo", "namespace": "lab"},
                                       "spec": {"replicas": replicas, **spec}})


def pod(rc: RaftCluster, member: str, *, join: bool = False, ready: bool = True, stale: bool = False,
        condemned: bool = False, peers: list[str] | None = None) -> dict[str, Any]:
    p = b.member_pod(rc, OWNER, member, peers or rc.member_ids(), join=join)
    p["metadata"]["uid"] = f"uid-{member}"
    if stale:
        p["metadata"]["annotations"][b.A_TEMPLATE_HASH] = "old"
    if condemned:
        p["metadata"]["annotations"][b.A_CONDEMNED] = "true"
    p["status"] = {"podIP": "127.1.0.9", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return p


def observed(rc: RaftCluster, leader: str | None, voters: list[str], learners: list[str] = (),  # type: ignore[assignment]
             pods: dict[str, dict[str, Any]] | None = None, commit: int = 100,
             match: dict[str, int] | None = None, unreachable: tuple[str, ...] = ()) -> Observed:
    obs = Observed(pods=pods if pods is not None else {m: pod(rc, m) for m in voters + list(learners)})
    for m in obs.pods:
        if m in unreachable:
            continue
        role = pb.ROLE_LEADER if m == leader else pb.ROLE_LEARNER if m in learners else pb.ROLE_FOLLOWER
        obs.status[m] = pb.StatusResponse(id=m, role=role, term=3, commit_index=commit)
    obs.leader = leader
    obs.voters, obs.learners = set(voters), set(learners)
    obs.match = {m: commit for m in voters + list(learners)} | (match or {})
    return obs


def step(rc: RaftCluster, obs: Observed, phase: str = "Running") -> tuple[Step | None, list[tuple[str, ...]]]:
    r = Recorder()
    body = {"metadata": {"name": "demo", "namespace": "lab", "generation": 1}, "status": {"phase": phase}}
    result = asyncio.run(r._step(body, rc, OWNER, obs))
    return result, r.actions


def test_bootstrap_creates_every_initial_member_with_all_peers() -> None:
    rc = cluster(3)
    result, actions = step(rc, Observed(), phase="Pending")
    assert result is not None and result.reason == "Bootstrapping"
    assert actions == [("create", m, "boot", "n1,n2,n3") for m in ("n1", "n2", "n3")]


def test_bootstrap_replaces_a_pod_made_for_another_initial_membership() -> None:
    rc = cluster(3)
    obs = Observed(pods={"n1": pod(rc, "n1", peers=["n1", "n2", "n3", "n4", "n5"])})
    result, actions = step(rc, obs, phase="Bootstrapping")
    assert result is not None and result.reason == "BootstrapPodReplaced" and actions == [("delete", "n1")]


def test_steady_cluster_does_nothing() -> None:
    rc = cluster(3)
    result, actions = step(rc, observed(rc, "n1", ["n1", "n2", "n3"]))
    assert result is None and actions == []


def test_scale_up_adds_a_learner_then_promotes_it() -> None:
    rc = cluster(5)
    obs = observed(rc, "n1", ["n1", "n2", "n3"])
    _, actions = step(rc, obs)
    assert actions == [("create", "n4", "join", "n1,n2,n3")]
    obs.pods["n4"] = pod(rc, "n4", join=True)
    obs.status["n4"] = pb.StatusResponse(id="n4", role=pb.ROLE_FOLLOWER)
    _, actions = step(rc, obs)
    assert actions == [("AddLearner", "n4")]
    obs.learners.add("n4")
    obs.match["n4"] = 0
    result, actions = step(rc, obs)
    assert result is not None and result.reason == "LearnerCatchingUp" and actions == []
    obs.match["n4"] = 100
    _, actions = step(rc, obs)
    assert actions == [("PromoteLearner", "n4")]


def test_scale_down_moves_leadership_away_then_removes_highest_first() -> None:
    rc = cluster(3)
    obs = observed(rc, "n5", ["n1", "n2", "n3", "n4", "n5"], match={"n2": 99})
    _, actions = step(rc, obs)
    assert actions == [("TransferLeadership", "n3")]  # a wanted voter, the most caught up
    obs = observed(rc, "n1", ["n1", "n2", "n3", "n4", "n5"])
    _, actions = step(rc, obs)
    assert actions == [("condemn", "n5")]
    obs.pods["n5"] = pod(rc, "n5", condemned=True)
    _, actions = step(rc, obs)
    assert actions == [("RemoveMember", "n5"), ("delete", "n5")]


def test_lost_empty_dir_member_is_removed_then_re_added_empty() -> None:
    rc = cluster(3)
    obs = observed(rc, "n1", ["n1", "n2", "n3"])
    del obs.pods["n3"], obs.status["n3"]
    result, actions = step(rc, obs)
    assert result is not None and result.reason == "LostMemberRemoved" and actions == [("RemoveMember", "n3")]
    obs.voters.discard("n3")
    _, actions = step(rc, obs)
    assert actions == [("create", "n3", "join", "n1,n2")]


def test_lost_pvc_member_comes_back_on_its_volume() -> None:
    rc = cluster(3, storage={"type": "pvc"})
    obs = observed(rc, "n1", ["n1", "n2", "n3"])
    del obs.pods["n3"], obs.status["n3"]
    _, actions = step(rc, obs)
    assert actions == [("create", "n3", "boot", "n1,n2,n3")]


def test_scale_down_with_pvc_deletes_the_claim_before_the_pod() -> None:
    rc = cluster(3, storage={"type": "pvc"})
    obs = observed(rc, "n1", ["n1", "n2", "n3", "n4"])
    obs.pods["n4"] = pod(rc, "n4", condemned=True)
    _, actions = step(rc, obs)
    # A failed claim deletion leaves the pod, so the next pass sees the member again and retries.
    assert actions == [("RemoveMember", "n4"), ("kube", "delete"), ("delete", "n4")]


def test_a_pod_waits_while_its_claim_is_still_being_deleted() -> None:
    rc = cluster(3, storage={"type": "pvc"})
    pvc = b.persistent_volume_claim(rc, OWNER, "n3")
    pvc["metadata"]["deletionTimestamp"] = "2026-12-04T00:00:00Z"

    class Kube:
        created: list[str] = []

        def get(self, path: str) -> dict[str, Any] | None:
            return pvc if "persistentvolumeclaims" in path else None

        def create(self, obj: dict[str, Any]) -> None:
            self.created.append(obj["kind"])

    r = RaftClusterReconciler(kube=Kube(), events=None, namespace="lab", name="demo")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="still being deleted"):
        asyncio.run(r._create_pod(rc, OWNER, "n3", {"n1", "n2"}, join=True))
    assert Kube.created == [], "no pod is made on a claim that is going away"


def test_never_fewer_voters_than_a_quorum() -> None:
    rc = cluster(5)
    obs = observed(rc, "n1", ["n1", "n2", "n3"])  # 3 of 5: removing one more would leave 2 < 3
    del obs.pods["n3"], obs.status["n3"]
    result, actions = step(rc, obs)
    assert result is not None and result.reason == "WaitingForQuorum" and actions == []


def test_a_pod_with_old_data_is_not_re_added() -> None:
    rc = cluster(3)
    obs = observed(rc, "n1", ["n1", "n2"], pods=None)
    obs.pods["n3"] = pod(rc, "n3", join=False)
    obs.status["n3"] = pb.StatusResponse(id="n3", role=pb.ROLE_FOLLOWER)
    result, actions = step(rc, obs)
    assert result is not None and result.reason == "StalePodReplaced" and actions == [("condemn", "n3")]


def test_rolling_restart_followers_first_leader_last() -> None:
    rc = cluster(3)
    pods = {m: pod(rc, m, stale=True) for m in ("n1", "n2", "n3")}
    obs = observed(rc, "n2", ["n1", "n2", "n3"], pods=pods)
    _, actions = step(rc, obs)
    assert actions == [("condemn", "n1")]
    pods = {"n1": pod(rc, "n1"), "n2": pod(rc, "n2", stale=True), "n3": pod(rc, "n3")}
    obs = observed(rc, "n2", ["n1", "n2", "n3"], pods=pods)
    _, actions = step(rc, obs)
    assert actions == [("TransferLeadership", "n1")] or actions == [("TransferLeadership", "n3")]


def test_rolling_restart_waits_for_every_member_to_be_healthy() -> None:
    rc = cluster(3)
    pods = {"n1": pod(rc, "n1", stale=True), "n2": pod(rc, "n2", ready=False), "n3": pod(rc, "n3")}
    obs = observed(rc, "n3", ["n1", "n2", "n3"], pods=pods)
    result, actions = step(rc, obs)
    assert result is not None and result.reason == "WaitingForHealth" and actions == []
    pods["n2"] = pod(rc, "n2")
    obs = observed(rc, "n3", ["n1", "n2", "n3"], pods=pods, match={"n2": 10})
    result, actions = step(rc, obs)
    assert result is not None and result.reason == "WaitingForHealth"


def test_single_member_empty_dir_refuses_a_restart_that_loses_data() -> None:
    rc = cluster(1)
    obs = observed(rc, "n1", ["n1"], pods={"n1": pod(rc, "n1", stale=True)})
    obs.pods["n1"]["metadata"]["annotations"][b.A_TEMPLATE_HASH] = "old"
    result, actions = step(rc, obs)
    assert result is not None and actions == []


def test_no_leader_and_every_member_gone_starts_over() -> None:
    rc = cluster(3)
    result, actions = step(rc, Observed(), phase="Degraded")
    assert result is not None and result.reason == "AllMembersLost" and actions == [("phase", "Bootstrapping")]


@pytest.mark.parametrize("flip", [True, False])
def test_conditions_keep_transition_time_unless_they_flip(flip: bool) -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    new = _conditions(old, 2, [("Ready", not flip, "R", "m")])
    assert (new[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z") is (not flip)
    assert new[0]["observedGeneration"] == 2
