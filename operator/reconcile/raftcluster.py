"""RaftCluster reconciliation: observe pods and members, take ONE safe step, write status.

Each pass reads everything afresh (the RaftCluster, its pods, each member's
Cluster.Status) and so can be killed at any line and re-run. Membership changes
are explicit and go through the leader, one at a time:

- new member: pod started with FAULTLAB_JOIN (empty), AddLearner, wait until its
  match index reaches the leader's commit index, PromoteLearner;
- leaving member: its pod is annotated `condemned` first, then (leadership moved
  away if it leads) RemoveMember, then the pod (and its PVC) is deleted;
- lost pod: with storage pvc it is recreated on its data; with emptyDir its data
  is gone, so it is removed from the configuration and re-added as a learner
  (re-admitting an emptied voter could elect a leader missing committed entries);
- spec change needing a restart (template hash): one pod at a time, followers
  first, the leader last after TransferLeadership, each only while every other
  voter is ready and caught up.

Voters never drop below a quorum of `spec.replicas`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from pydantic import ValidationError

from faultlab.operator.api import RaftCluster, quorum
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.events import EventRecorder
from faultlab.operator.reconcile.kube import JSON, ApiError, Kube, object_path, path
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc

log = logging.getLogger("faultlab.operator.raftcluster")
A_SPEC_HASH = "faultlab.dev/spec-hash"
STATUS_TIMEOUT_S = 1.0
ADMIN_TIMEOUT_S = 10.0
ROLES = {pb.ROLE_LEADER: "Leader", pb.ROLE_FOLLOWER: "Follower", pb.ROLE_CANDIDATE: "Candidate",
         pb.ROLE_PRE_CANDIDATE: "PreCandidate", pb.ROLE_LEARNER: "Learner"}
BUSY_S = 0.5  # next pass while something is in progress
STEADY_S = 3.0  # next pass when all is well (events wake it sooner); bounds how stale status.leader gets
RECHECK_STATIC_S = 30.0  # Services, ConfigMap, PDB, Secret: re-checked on spec changes and this often
CATCH_UP_SLACK = 64  # PromoteLearner itself waits for the exact catch-up


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_ready(pod: JSON) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


def pod_ip(pod: JSON) -> str:
    return str(pod.get("status", {}).get("podIP") or "")


def annotation(pod: JSON, key: str) -> str:
    return str(pod["metadata"].get("annotations", {}).get(key, ""))


@dataclass
class Observed:
    """One pass's view of a cluster."""

    pods: dict[str, JSON] = field(default_factory=dict)  # member id -> pod
    strays: list[JSON] = field(default_factory=list)  # our pods with no usable member id
    status: dict[str, pb.StatusResponse] = field(default_factory=dict)  # reachable members
    leader: str | None = None
    voters: set[str] = field(default_factory=set)
    learners: set[str] = field(default_factory=set)
    match: dict[str, int] = field(default_factory=dict)  # leader's view

    @property
    def leader_status(self) -> pb.StatusResponse | None:
        return self.status.get(self.leader) if self.leader else None

    @property
    def config(self) -> set[str]:
        return self.voters | self.learners

    def caught_up(self, member: str, slack: int = CATCH_UP_SLACK) -> bool:
        """Its log reaches (within `slack` entries, for a busy cluster) what the leader has committed."""
        ls = self.leader_status
        if ls is None:
            return False
        return member == self.leader or self.match.get(member, 0) + slack >= ls.commit_index

    def healthy(self, member: str) -> bool:
        pod = self.pods.get(member)
        return pod is not None and pod_ready(pod) and member in self.status and self.caught_up(member)


@dataclass
class Step:
    """What a pass did (or waits for): becomes the Progressing condition and, if `event`, an Event."""

    reason: str
    message: str
    event: bool = True
    warning: bool = False


class _WaitForClaim(Exception):
    """A member's pod cannot be made yet: its claim is still being deleted."""


class RaftClusterReconciler:
    def __init__(self, kube: Kube, events: EventRecorder, namespace: str, name: str) -> None:
        self.kube = kube
        self.events = events
        self.namespace = namespace
        self.name = name
        self._static: tuple[str, int] | None = None  # (uid, generation) whose Services etc. were last ensured
        self._static_at = 0.0

    # ---------------------------------------------------------------- I/O helpers

    async def _k(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _status_of(self, member: str, ip: str) -> tuple[str, pb.StatusResponse | None]:
        try:
            async with grpc.aio.insecure_channel(f"{ip}:{b.GRPC_PORT}") as channel:
                reply = await pb_grpc.ClusterStub(channel).Status(pb.StatusRequest(), timeout=STATUS_TIMEOUT_S)
                return member, reply
        except grpc.aio.AioRpcError:
            return member, None

    async def _admin(self, obs: Observed, call: str, request: Any, timeout: float = ADMIN_TIMEOUT_S) -> Any:
        """An admin RPC on the leader's pod."""
        assert obs.leader is not None
        ip = pod_ip(obs.pods[obs.leader])
        async with grpc.aio.insecure_channel(f"{ip}:{b.GRPC_PORT}") as channel:
            return await getattr(pb_grpc.ClusterStub(channel), call)(request, timeout=timeout)

    # ---------------------------------------------------------------- the pass

    async def reconcile(self) -> float | None:
        """One pass. Returns seconds until the next one, or None when the cluster is gone."""
        body = await self._k(self.kube.get, path("RaftCluster", self.namespace, self.name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            rc = RaftCluster.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")
                                             if k in body})
        except ValidationError as exc:
            message = f"spec is invalid: {exc.errors(include_url=False)[0]['msg']}"
            await self._write_status(body, None, Observed(), Step("InvalidSpec", message, warning=True))
            await self.events.post(body, "InvalidSpec", message, warning=True)
            return STEADY_S
        owner = b.owner_of(body)
        stamp = (owner.uid, body["metadata"].get("generation", 0))
        if self._static != stamp or time.monotonic() - self._static_at > RECHECK_STATIC_S:
            await self._ensure_static(rc, owner)
            self._static, self._static_at = stamp, time.monotonic()
        obs = await self._observe(owner)
        try:
            step = await self._step(body, rc, owner, obs)
        except _WaitForClaim as wait:
            step = Step("WaitingForVolume", str(wait), event=False)
        if step is not None and step.event:
            await self.events.post(body, step.reason, step.message, warning=step.warning)
        if step is not None:  # the step changed things: show the new state
            obs = await self._observe(owner)
        await self._write_status(body, rc, obs, step)
        return BUSY_S if step is not None else STEADY_S

    async def _ensure_static(self, rc: RaftCluster, owner: b.Owner) -> None:
        for desired in b.static_objects(rc, owner):
            digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]
            desired["metadata"].setdefault("annotations", {})[A_SPEC_HASH] = digest
            existing = await self._k(self.kube.get, object_path(desired))
            if existing is None:
                try:
                    await self._k(self.kube.create, desired)
                except ApiError as exc:
                    if not exc.conflict:
                        raise
            elif existing["metadata"].get("annotations", {}).get(A_SPEC_HASH) != digest:
                patch = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
                await self._k(self.kube.patch, object_path(desired), patch)
        if await self._k(self.kube.get, path("Secret", owner.namespace, b.secret_name(owner.name))) is None:
            await self._k(self.kube.ensure, b.agent_secret(owner, secrets.token_urlsafe(32)))
        if rc.spec.storage.type == "pvc":
            for member in rc.member_ids():
                pvc = b.persistent_volume_claim(rc, owner, member)
                if await self._k(self.kube.get, object_path(pvc)) is None:
                    await self._k(self.kube.ensure, pvc)

    async def _observe(self, owner: b.Owner) -> Observed:
        obs = Observed()
        pods = await self._k(self.kube.list, path("Pod", owner.namespace), labels=b.selector_labels(owner.name))
        for pod in pods:
            member = pod["metadata"].get("labels", {}).get(b.L_MEMBER, "")
            try:
                b.member_index(member)
            except ValueError:
                obs.strays.append(pod)
                continue
            if member in obs.pods:
                obs.strays.append(pod)
                continue
            obs.pods[member] = pod
        queries = [self._status_of(m, pod_ip(p)) for m, p in obs.pods.items()
                   if pod_ip(p) and not p["metadata"].get("deletionTimestamp")]
        for member, reply in await asyncio.gather(*queries):
            if reply is not None and reply.id == member:
                obs.status[member] = reply
        leaders = sorted((s.term, m) for m, s in obs.status.items() if s.role == pb.ROLE_LEADER)
        if leaders:
            obs.leader = leaders[-1][1]
            ls = obs.status[obs.leader]
            for m in ls.members:
                (obs.voters if m.voter else obs.learners).add(m.id)
                obs.match[m.id] = m.match_index
        return obs

    # ---------------------------------------------------------------- deciding

    async def _create_pod(self, rc: RaftCluster, owner: b.Owner, member: str, peers: set[str], join: bool) -> None:
        if rc.spec.storage.type == "pvc":
            await self._ensure_claim(rc, owner, member)
        pod = b.member_pod(rc, owner, member, sorted(peers | {member}, key=b.member_index), join=join)
        try:
            await self._k(self.kube.create, pod)
        except ApiError as exc:
            if not exc.conflict:  # an old pod of that name is still terminating: next pass
                raise

    async def _ensure_claim(self, rc: RaftCluster, owner: b.Owner, member: str) -> None:
        """The member's PVC exists and is not on its way out (a pod on a leaving claim would hang)."""
        pvc = b.persistent_volume_claim(rc, owner, member)
        existing = await self._k(self.kube.get, object_path(pvc))
        if existing is None:
            await self._k(self.kube.ensure, pvc)
        elif existing["metadata"].get("deletionTimestamp"):
            raise _WaitForClaim(f"the claim {pvc['metadata']['name']} of member {member} is still being deleted "
                                f"(its old data must not be reused); waiting before creating the pod")

    async def _remove_member_pod(self, rc: RaftCluster, owner: b.Owner, member: str, pod: JSON,
                                 desired: list[str]) -> None:
        """Deletes a leaving member's pod, and first its PVC when the member is not wanted any more.

        The claim goes first: if deleting it fails, the pod is still there, so the next pass sees
        the member again and retries (the claim itself is kept until its pod is gone).
        """
        if member not in desired and rc.spec.storage.type == "pvc":
            await self._k(self.kube.delete, path("PersistentVolumeClaim", owner.namespace,
                                                 b.pvc_name(owner.name, member)))
        await self._delete_pod(pod)

    async def _delete_pod(self, pod: JSON, grace: int | None = None) -> None:
        await self._k(self.kube.delete, object_path(pod), grace_seconds=grace, uid=pod["metadata"]["uid"])

    async def _condemn(self, pod: JSON) -> None:
        await self._k(self.kube.patch, object_path(pod),
                      {"metadata": {"annotations": {b.A_CONDEMNED: "true"}}})

    async def _step(self, body: JSON, rc: RaftCluster, owner: b.Owner, obs: Observed) -> Step | None:
        desired = rc.member_ids()
        replicas = rc.spec.replicas
        bootstrapped = (body.get("status") or {}).get("phase") not in (None, "Pending", "Bootstrapping") or any(
            s.term > 0 for s in obs.status.values())

        for pod in obs.strays:
            await self._delete_pod(pod)
            return Step("StrayPodDeleted", f"deleted pod {pod['metadata']['name']}: no member of this cluster")
        terminating = [m for m, p in obs.pods.items() if p["metadata"].get("deletionTimestamp")]

        if not bootstrapped:
            return await self._bootstrap(rc, owner, obs, desired)

        if obs.leader is None:
            if not obs.pods and not obs.status and rc.spec.storage.type == "emptyDir":
                # Every member is gone with its data: nothing to rejoin, start over.
                await self._write_phase(body, "Bootstrapping")
                return Step("AllMembersLost", "every member was lost with its data; bootstrapping an empty "
                            "cluster", warning=True)
            missing = [m for m in desired if m not in obs.pods]
            if rc.spec.storage.type == "pvc" and missing:
                peers = set(desired)
                for m in missing:
                    await self._create_pod(rc, owner, m, peers, join=False)
                return Step("MemberPodRecreated", f"recreated pods of {', '.join(missing)} on their volumes")
            return None  # an election is in progress, or quorum is lost; status says which

        ls = obs.leader_status
        assert ls is not None

        # 1. Pods marked to leave: take them out of the configuration, then delete them.
        for member, pod in obs.pods.items():
            if annotation(pod, b.A_CONDEMNED) != "true" or member in terminating:
                continue
            if member in obs.config:
                if member == obs.leader:
                    return await self._transfer_away(obs, desired, member)
                if member in obs.voters and len(obs.voters) - 1 < quorum(replicas):
                    return Step("WaitingForQuorum", f"not removing {member}: {len(obs.voters) - 1} voters would be "
                                f"fewer than a quorum of {replicas}", event=False)
                await self._admin(obs, "RemoveMember", pb.RemoveMemberRequest(id=member))
            await self._remove_member_pod(rc, owner, member, pod, desired)
            return Step("MemberRemoved", f"removed member {member} and deleted pod {pod['metadata']['name']}")

        # 2. Members in the configuration whose pod is gone.
        for member in sorted(obs.config, key=b.member_index):
            if member in obs.pods:
                continue
            if rc.spec.storage.type == "pvc" and member in desired:
                await self._create_pod(rc, owner, member, obs.config, join=False)
                return Step("MemberPodRecreated", f"pod of {member} was lost; recreated it on its volume")
            if member in obs.voters and len(obs.voters) - 1 < quorum(replicas):
                return Step("WaitingForQuorum", f"member {member} lost its pod; removing it would leave "
                            f"{len(obs.voters) - 1} voters, fewer than a quorum of {replicas}", warning=True)
            await self._admin(obs, "RemoveMember", pb.RemoveMemberRequest(id=member))
            return Step("LostMemberRemoved", f"member {member} lost its pod and data; removed it from the "
                        "configuration to re-add it empty", warning=True)

        # 3. Pods that are no member and not wanted.
        for member, pod in obs.pods.items():
            if member not in obs.config and member not in desired and member not in terminating:
                await self._remove_member_pod(rc, owner, member, pod, desired)
                return Step("PodDeleted", f"deleted pod {pod['metadata']['name']}: member {member} is not wanted")

        # 4. Learners: promote the caught-up ones we want; drop those we do not.
        for member in sorted(obs.learners, key=b.member_index):
            if member not in desired:
                if member in obs.pods:
                    await self._condemn(obs.pods[member])
                    return Step("MemberLeaving", f"learner {member} is beyond spec.replicas; removing it")
                await self._admin(obs, "RemoveMember", pb.RemoveMemberRequest(id=member))
                return Step("MemberRemoved", f"removed learner {member}")
            if not obs.caught_up(member):
                return Step("LearnerCatchingUp", f"learner {member} has {obs.match.get(member, 0)} of "
                            f"{ls.commit_index} committed entries", event=False)
            await self._admin(obs, "PromoteLearner", pb.PromoteLearnerRequest(id=member))
            return Step("MemberPromoted", f"promoted learner {member} to voter")

        # 5. Wanted members outside the configuration: start them empty, then add them as learners.
        for member in desired:
            if member in obs.config:
                continue
            pod = obs.pods.get(member)
            if pod is None:
                await self._create_pod(rc, owner, member, obs.config, join=True)
                return Step("MemberPodCreated", f"created pod {b.pod_name(owner.name, member)} for new member "
                            f"{member}")
            if member in terminating:
                return Step("WaitingForPod", f"old pod of {member} is terminating", event=False)
            if annotation(pod, b.A_JOIN) != "true":  # it holds data of an earlier membership: start it afresh
                await self._condemn(pod)
                return Step("StalePodReplaced", f"pod of {member} holds data of an earlier membership; "
                            "replacing it")
            if member not in obs.status:
                return Step("WaitingForPod", f"waiting for pod of {member} to serve", event=False)
            address = b.member_address(owner.name, owner.namespace, member)
            await self._admin(obs, "AddLearner", pb.AddLearnerRequest(id=member, address=address))
            return Step("LearnerAdded", f"added {member} as a learner")

        # 6. Voters beyond spec.replicas: highest first; move leadership away first.
        extra = sorted((m for m in obs.voters if m not in desired), key=b.member_index)
        if extra:
            member = extra[-1]
            if member == obs.leader:
                return await self._transfer_away(obs, desired, member)
            if len(obs.voters) - 1 < quorum(replicas):
                return Step("WaitingForQuorum", f"not removing {member}: too few voters", event=False)
            if member in obs.pods:
                await self._condemn(obs.pods[member])
                return Step("MemberLeaving", f"scaling down: member {member} leaves")
            await self._admin(obs, "RemoveMember", pb.RemoveMemberRequest(id=member))
            return Step("MemberRemoved", f"scaling down: removed member {member}")

        # 7. Rolling restart for a changed template: followers first, the leader last.
        return await self._rolling_restart(rc, owner, obs, desired)

    async def _bootstrap(self, rc: RaftCluster, owner: b.Owner, obs: Observed, desired: list[str]) -> Step | None:
        want = b.peers_value(owner.name, owner.namespace, desired)
        for member, pod in obs.pods.items():
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
            if (member not in desired or env.get("FAULTLAB_PEERS") != want) and \
                    not pod["metadata"].get("deletionTimestamp"):
                await self._delete_pod(pod, grace=0)
                return Step("BootstrapPodReplaced", f"pod {pod['metadata']['name']} was made for another initial "
                            "membership; replacing it before the first election")
        missing = [m for m in desired if m not in obs.pods]
        for member in missing:
            await self._create_pod(rc, owner, member, set(desired), join=False)
        if missing:
            return Step("Bootstrapping", f"created pods for {', '.join(missing)} (initial members: "
                        f"{', '.join(desired)})")
        return Step("Bootstrapping", "waiting for the initial members to elect a leader", event=False)

    async def _transfer_away(self, obs: Observed, desired: list[str], member: str) -> Step:
        candidates = sorted((obs.match.get(m, 0), m) for m in obs.voters
                            if m != member and m in desired and m in obs.status)
        if not candidates:
            return Step("WaitingForVoter", f"no ready voter to take leadership from {member}", event=False)
        target = candidates[-1][1]
        try:
            await self._admin(obs, "TransferLeadership", pb.TransferLeadershipRequest(target_id=target))
        except grpc.aio.AioRpcError as exc:
            return Step("LeadershipTransferFailed", f"transfer from {member} to {target}: {exc.details()}",
                        warning=True)
        return Step("LeadershipTransferred", f"moved leadership from {member} to {target}")

    async def _rolling_restart(self, rc: RaftCluster, owner: b.Owner, obs: Observed,
                               desired: list[str]) -> Step | None:
        want = b.template_hash(rc, owner)
        stale = [m for m in desired if m in obs.pods and annotation(obs.pods[m], b.A_TEMPLATE_HASH) != want]
        if not stale:
            return None
        unhealthy = [m for m in desired if not obs.healthy(m)]
        if unhealthy:
            return Step("WaitingForHealth", f"rolling restart waits for {', '.join(unhealthy)} to be ready and "
                        "caught up", event=False)
        followers = [m for m in stale if m != obs.leader]
        if not followers:  # only the leader is left: hand leadership to an updated member first
            return await self._transfer_away(obs, desired, obs.leader or "")
        member = followers[0]
        pod = obs.pods[member]
        if rc.spec.storage.type == "pvc":
            await self._delete_pod(pod)
            return Step("RollingRestart", f"restarting {member} for the new template (its data stays)")
        if len(obs.voters) - 1 < quorum(rc.spec.replicas):
            return Step("RestartBlocked", f"cannot restart {member}: its emptyDir data would be lost and "
                        f"{len(obs.voters) - 1} voters are fewer than a quorum; use storage.type pvc or more "
                        "replicas", warning=True)
        await self._condemn(pod)
        return Step("RollingRestart", f"replacing {member} for the new template (re-added empty, then promoted)")

    # ---------------------------------------------------------------- status

    async def _write_phase(self, body: JSON, phase: str) -> None:
        await self._k(self.kube.patch, path("RaftCluster", self.namespace, self.name, "status"),
                      {"status": {"phase": phase}})
        body.setdefault("status", {})["phase"] = phase

    async def _write_status(self, body: JSON, rc: RaftCluster | None, obs: Observed, step: Step | None) -> None:
        old = body.get("status") or {}
        generation = body["metadata"].get("generation", 0)
        desired = rc.member_ids() if rc else []
        ls = obs.leader_status
        members = []
        for member in sorted(set(obs.pods) | obs.config | set(desired), key=b.member_index):
            pod = obs.pods.get(member)
            st = obs.status.get(member)
            entry: JSON = {
                "id": member,
                "address": b.member_address(self.name, self.namespace, member),
                "role": ROLES.get(st.role, "Unknown") if st else ("Down" if pod is None or pod_ip(pod) else
                                                                    "Unknown"),
                "ready": bool(pod and pod_ready(pod) and st is not None),
                "voter": member in obs.voters if obs.leader else member in desired,
                "term": st.term if st else 0,
                "commitIndex": st.commit_index if st else 0,
                "appliedIndex": st.applied_index if st else 0,
                "pod": pod["metadata"]["name"] if pod else "",
            }
            members.append(entry)
        ready_voters = [m for m in members if m["voter"] and m["ready"]]
        phase = old.get("phase") or "Pending"
        if rc is None:
            phase = "Failed"
        elif obs.leader is None:
            phase = "Bootstrapping" if phase in ("Pending", "Bootstrapping") else "Degraded"
        problems: list[str] = []
        if rc is not None and obs.leader is not None:
            down = [m["id"] for m in members if m["voter"] and not m["ready"]]
            if down:
                problems.append(f"voters not ready: {', '.join(down)}")
            if len(obs.voters) < rc.spec.replicas:
                problems.append(f"{len(obs.voters)} of {rc.spec.replicas} voters")
            phase = "Degraded" if down else "Running"
        elif rc is not None and phase == "Degraded":
            problems.append("no leader: an election is in progress or a quorum is lost")
        ready = obs.leader is not None and len(ready_voters) >= quorum(max(len(obs.voters), 1))
        conditions = _conditions(old.get("conditions", []), generation, [
            ("Ready", ready, "LeaderElected" if ready else "NoLeader" if obs.leader is None else "QuorumNotReady",
             f"leader {obs.leader} with {len(ready_voters)} ready voters" if ready else
             "no leader with a ready quorum"),
            ("Progressing", step is not None, step.reason if step else "Reconciled",
             step.message if step else "the cluster matches its spec"),
            ("Degraded", bool(problems) or rc is None, "MembersNotReady" if problems else
             ("InvalidSpec" if rc is None else "AllMembersReady"),
             "; ".join(problems) if problems else (step.message if rc is None and step else "all members ready")),
        ])
        status: JSON = {
            "phase": phase,
            "replicas": len(obs.pods),
            "readyReplicas": sum(1 for p in obs.pods.values() if pod_ready(p)),
            "leader": obs.leader,
            "term": max([s.term for s in obs.status.values()] or [old.get("term", 0)]),
            "commitIndex": ls.commit_index if ls else old.get("commitIndex", 0),
            "members": members,
            "conditions": conditions,
            "observedGeneration": generation,
        }
        if all(old.get(k) == v for k, v in status.items() if k != "leader") and old.get("leader") == obs.leader:
            return
        await self._k(self.kube.patch, path("RaftCluster", self.namespace, self.name, "status"), {"status": status})


def _conditions(old: list[JSON], generation: int, new: list[tuple[str, bool, str, str]]) -> list[JSON]:
    """Conditions with lastTransitionTime kept unless the status flips."""
    previous = {c.get("type"): c for c in old}
    out = []
    for kind, value, reason, message in new:
        status = "True" if value else "False"
        before = previous.get(kind, {})
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        out.append({"type": kind, "status": status, "reason": reason, "message": message[:1000],
                    "lastTransitionTime": since or now_iso(), "observedGeneration": generation})
    return out
