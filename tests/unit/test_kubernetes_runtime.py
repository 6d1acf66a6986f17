"""The Kubernetes runtime's addresses, from pods as the builders make them (no API server: a dict of objects).

Members are dialled at the pod IP: data services on the `grpc` port, the FaultAgent on the
pod's `agent` port (the data port for a pod made before agents had a port of their own),
and an agent client follows its member to a replacement pod.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from faultlab.operator.api import RaftCluster
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.kube import path
from faultlab.operator.runtime.base import TargetRef
from faultlab.operator.runtime.kubernetes import KubernetesRuntime

OWNER = b.Owner(name="demo", namespace="lab", uid="1234")
TARGET = TargetRef("RaftCluster", "demo", "lab")


def cluster(**spec: Any) -> RaftCluster:
    return RaftCluster.model_validate({"metadata": {"name": "demo", "namespace": "lab"}, "spec": spec})


class FakeKube:
    """get/list over a dict of objects by REST path."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {
            path("RaftCluster", "lab", "demo"): {"metadata": {"name": "demo", "namespace": "lab"}}}

    def add_pod(self, pod: dict[str, Any], ip: str) -> None:
        pod = copy.deepcopy(pod)
        pod["status"] = {"podIP": ip}
        self.objects[path("Pod", "lab", pod["metadata"]["name"])] = pod

    def get(self, p: str) -> dict[str, Any] | None:
        return self.objects.get(p)

    def list(self, p: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return [o for k, o in self.objects.items() if k.startswith(p + "/")
                and (labels or {}).items() <= o["metadata"].get("labels", {}).items()]


def member_pod(rc: RaftCluster, member: str) -> dict[str, Any]:
    return b.member_pod(rc, OWNER, member, ["n1", "n2"], join=False)


def test_members_are_dialled_on_the_data_port_and_their_agents_on_the_agent_port() -> None:
    kube = FakeKube()
    kube.add_pod(member_pod(cluster(), "n1"), "10.0.0.1")
    old = member_pod(cluster(), "n2")
    for container in old["spec"]["containers"]:  # a pod from before agents had a port of their own
        container["ports"] = [p for p in container["ports"] if p["name"] != "agent"]
    kube.add_pod(old, "10.0.0.2")
    runtime = KubernetesRuntime(kube)  # type: ignore[arg-type]
    members = asyncio.run(runtime.members(TARGET))
    assert [(m.id, m.address, m.agent_address) for m in members] == [
        ("n1", "10.0.0.1:7000", "10.0.0.1:7001"), ("n2", "10.0.0.2:7000", "10.0.0.2:7000")]
    assert runtime.known == {"10.0.0.1:7001": (TARGET, "n1"), "10.0.0.2:7000": (TARGET, "n2")}


def test_an_agent_client_follows_its_member_to_a_new_pod_and_its_agent_port() -> None:
    kube = FakeKube()
    kube.add_pod(member_pod(cluster(), "n1"), "10.0.0.1")
    runtime = KubernetesRuntime(kube)  # type: ignore[arg-type]
    runtime.remember(TARGET, {"n1": "10.0.0.1:7000"})  # a journal written before agents had their own port

    async def follow() -> list[str]:
        agent = runtime.agent_factory("10.0.0.1:7000", "token")  # no call is made: only addresses are resolved
        seen = []
        for ip in ("10.0.0.1", "10.0.0.9"):  # then the member's pod is replaced
            kube.add_pod(member_pod(cluster(), "n1"), ip)
            agent._checked = 0.0
            await agent._current()
            seen.append(agent.address)
        await agent.close()
        return seen

    assert asyncio.run(follow()) == ["10.0.0.1:7001", "10.0.0.9:7001"]
    assert runtime.known["10.0.0.9:7001"] == (TARGET, "n1")
