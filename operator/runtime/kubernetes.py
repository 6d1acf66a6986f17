"""The Kubernetes runtime: a target's members are its pods.

Members are found by the RaftCluster's pod labels and reached at their pod IPs
(the operator runs in the cluster network; the test kubelet gives each pod a
loopback IP): data services on the `grpc` port, the FaultAgent on the pod's
`agent` port. The agent token is read from the cluster's Secret. A kill deletes
the pod with grace period 0 (the operator recreates it); pausing a process needs
a signal from inside the pod's node, which no API offers, so pause/resume raise
a clear error instead of pretending.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.kube import ApiError, Kube, path
from faultlab.operator.runtime.base import Member, RuntimeError_, TargetRef
from faultlab.protos.agent.v1 import agent_pb2 as agent_pb

POLL_S = 0.2
DISK_FILL_NEEDS_PVC = (
    "diskFill ballast on Kubernetes needs the RaftCluster's spec.storage.type: pvc: an emptyDir volume has no "
    "filesystem of its own, so the ballast would fill the node's disk (for every pod on it) and the kubelet "
    "evicts a pod whose emptyDir passes its sizeLimit, deleting the member's data; use storage.type: pvc, "
    "or params.enospc: true (log writes fail with ENOSPC, no ballast), or the local runtime (faultlab chaos run)")
PAUSE_UNSUPPORTED = (
    "pause is not supported on Kubernetes: freezing a pod's process needs a signal from its node, "
    "which the API does not offer; use a partition (the member stops talking) or slowResponse instead, or run "
    "the experiment with the local runtime (faultlab chaos run)")


class KubernetesRuntime:
    """`Runtime` over the Kubernetes API; implements members, agent_token, kill and wait_running."""

    name = "kubernetes"
    unsupported_faults: ClassVar[dict[str, str]] = {"pause": PAUSE_UNSUPPORTED}

    async def refuse_fault(self, target: TargetRef, fault_type: str, params: Mapping[str, Any]) -> str | None:
        """diskFill ballast only on members with a volume of their own (storage.type: pvc)."""
        if fault_type != "diskFill" or params.get("enospc"):
            return None
        self._check_kind(target)
        rc = await asyncio.to_thread(self.kube.get, path("RaftCluster", target.namespace, target.name))
        storage = ((rc or {}).get("spec") or {}).get("storage") or {}
        return None if storage.get("type") == "pvc" else DISK_FILL_NEEDS_PVC

    def _check_kind(self, target: TargetRef) -> None:
        if target.kind != "RaftCluster":
            raise RuntimeError_(f"target kind {target.kind} is not supported by the Kubernetes runtime "
                                f"(supported: RaftCluster)")

    async def _pods(self, target: TargetRef) -> list[dict]:
        self._check_kind(target)
        pods: list[dict] = await asyncio.to_thread(self.kube.list, path("Pod", target.namespace),
                                                   labels=b.selector_labels(target.name))
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.known: dict[str, tuple[TargetRef, str]] = {}  # agent address -> (target, member id), for agent_factory

    def remember(self, target: TargetRef, members: dict[str, str]) -> None:
        """Agent addresses of members (id -> address) from an earlier run's journal, so its agents are found
        again."""
        for member, address in members.items():
            self.known[address] = (target, member)

    def agent_factory(self, address: str, token: str) -> PodAgent:
        """For EngineOptions.agent_factory: an agent client that follows its member to a new pod IP."""
        target, member = self.known.get(address, (None, ""))
        return PodAgent(self, target, member, address, token)

    async def members(self, target: TargetRef) -> list[Member]:
        rc = await asyncio.to_thread(self.kube.get, path("RaftCluster", target.namespace, target.name))
        if rc is None:
            raise RuntimeError_(f"target {target}: no RaftCluster {target.name} in namespace {target.namespace}")
        out = []
        for pod in await self._pods(target):
            labels = pod["metadata"].get("labels", {})
            member = labels.get(b.L_MEMBER)
            ip = pod.get("status", {}).get("podIP")
            if not member or not ip:
                continue
            agent = f"{ip}:{b.agent_port(pod)}"
            self.known[agent] = (target, member)
            out.append(Member(id=member, address=f"{ip}:{b.GRPC_PORT}", process=pod["metadata"]["name"],
                              labels=dict(labels), agent_address=agent))
        return sorted(out, key=lambda m: b.member_index(m.id))

    async def agent_token(self, target: TargetRef) -> str:
        self._check_kind(target)
        name = b.secret_name(target.name)
        try:
            secret = await asyncio.to_thread(self.kube.get, path("Secret", target.namespace, name))
        except ApiError as exc:
            raise RuntimeError_(f"cannot read Secret {target.namespace}/{name} with the agent token: {exc}") from None
        if secret is None or b.TOKEN_KEY not in secret.get("data", {}):
            raise RuntimeError_(f"Secret {target.namespace}/{name} with the agent token does not exist yet; is "
                                f"RaftCluster {target.name} reconciled (and spec.agent.enabled true)?")
        return base64.b64decode(secret["data"][b.TOKEN_KEY]).decode()

    async def _pod(self, target: TargetRef, member: Member) -> dict | None:
        name = member.process or b.pod_name(target.name, member.id)
        pod: dict | None = await asyncio.to_thread(self.kube.get, path("Pod", target.namespace, name))
        return pod

    async def kill(self, target: TargetRef, member: Member) -> None:
        """Deletes the member's pod at once (grace 0); the operator replaces it."""
        pod = await self._pod(target, member)
        if pod is None:
            raise RuntimeError_(f"member {member.id}: pod {member.process} does not exist")
        await asyncio.to_thread(self.kube.delete, path("Pod", target.namespace, pod["metadata"]["name"]),
                                grace_seconds=0, uid=pod["metadata"]["uid"])

    async def pause(self, target: TargetRef, member: Member) -> None:
        raise RuntimeError_(PAUSE_UNSUPPORTED)  # experiments with pause are rejected before this

    async def resume(self, target: TargetRef, member: Member) -> None:
        return None  # nothing is ever paused here

    async def wait_running(self, target: TargetRef, member: Member, timeout_s: float) -> bool:
        """Until a (new) pod of the member is Ready and serves gRPC health."""
        deadline = time.monotonic() + timeout_s
        name = b.pod_name(target.name, member.id)
        while time.monotonic() < deadline:
            pod = await asyncio.to_thread(self.kube.get, path("Pod", target.namespace, name))
            ip = (pod or {}).get("status", {}).get("podIP")
            if pod is not None and ip and not pod["metadata"].get("deletionTimestamp"):
                try:
                    async with grpc.aio.insecure_channel(f"{ip}:{b.GRPC_PORT}") as channel:
                        reply = await health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(POLL_S)
        return False


class PodAgent:
    """A FaultAgent client for one member that re-resolves the member's pod IP (and agent port) when its
    pod was replaced.

    A killed or evicted member comes back in a new pod with a new IP; rolling back or listing its
    faults must reach the new process (which holds none of them) instead of timing out on the old IP.
    """

    REFRESH_S = 1.0

    def __init__(self, runtime: KubernetesRuntime, target: TargetRef | None, member: str, address: str,
                 token: str) -> None:
        from faultlab.nodes.agent.client import AgentClient

        self._client_type = AgentClient
        self.runtime = runtime
        self.target = target
        self.member = member
        self.address = address
        self.token = token
        self.client = AgentClient(address, token, timeout=3.0)
        self._checked = 0.0

    async def _current(self) -> Any:
        if self.target is None or time.monotonic() - self._checked < self.REFRESH_S:
            return self.client
        self._checked = time.monotonic()
        try:
            pod = await asyncio.to_thread(self.runtime.kube.get, path(
                "Pod", self.target.namespace, b.pod_name(self.target.name, self.member)))
        except ApiError:
            return self.client
        ip = (pod or {}).get("status", {}).get("podIP")
        if ip and pod is not None and f"{ip}:{b.agent_port(pod)}" != self.address:
            await self.client.close()
            self.address = f"{ip}:{b.agent_port(pod)}"
            self.runtime.known[self.address] = (self.target, self.member)
            self.client = self._client_type(self.address, self.token, timeout=3.0)
        return self.client

    async def inject(self, fault: agent_pb.Fault, *, timeout: float | None = None) -> agent_pb.InjectResponse:
        reply: agent_pb.InjectResponse = await (await self._current()).inject(fault, timeout=timeout)
        return reply

    async def recover(self, fault_id: str, *, timeout: float | None = None) -> bool:
        return bool(await (await self._current()).recover(fault_id, timeout=timeout))

    async def list(self, *, timeout: float | None = None) -> agent_pb.ListResponse:
        reply: agent_pb.ListResponse = await (await self._current()).list(timeout=timeout)
        return reply

    async def close(self) -> None:
        await self.client.close()
