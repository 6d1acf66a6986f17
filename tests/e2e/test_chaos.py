"""ChaosExperiments through the operator: a leader partition with a checked verdict, and an operator
killed mid-experiment (as deleting its pod does: SIGTERM, SIGKILL after the grace period) that
resumes, rolls back and completes."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from faultlab.nodes.agent.client import AgentClient
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.kube import Kube, path
from tests.e2e.conftest import E2E_NS
from tests.e2e.harness import OperatorProcess, PodAccess, wait_for
from tests.e2e.test_raftcluster import Cluster, raft_cluster

pytestmark = pytest.mark.timeout(300)
NAME = "target"


def experiment(name: str, *, duration: float, fault_seconds: float) -> dict[str, Any]:
    return {
        "apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment",
        "metadata": {"name": name, "namespace": E2E_NS},
        "spec": {
            "target": {"kind": "RaftCluster", "name": NAME},
            "steadyState": {"probes": [
                {"name": "leader", "type": "leaderExists", "everySeconds": 0.25},
                {"name": "errors", "type": "workloadErrorRate", "tolerance": {"max": 0.5}, "everySeconds": 0.25},
            ]},
            "faults": [{"name": "cut-leader", "type": "partition", "target": {"role": "leader", "mode": "one"},
                        "durationSeconds": fault_seconds}],
            "blastRadius": {"maxTargets": 1},
            "workload": {"clients": 3, "keys": 8, "rateLimit": 60},
            "checks": ["linearizable", "noLostWrites"],
            "durationSeconds": duration,
        },
    }


@pytest.fixture(scope="module")
def cluster(admin: Kube, operator: OperatorProcess, pods: PodAccess) -> Iterator[Cluster]:
    admin.create(raft_cluster(3, name=NAME))
    c = Cluster(admin, pods, operator, name=NAME)
    c.wait_ready(3, timeout=120)
    yield c
    c.delete()


def chaos_status(admin: Kube, name: str) -> dict[str, Any]:
    obj = admin.get(path("ChaosExperiment", E2E_NS, name)) or {}
    return obj.get("status") or {}


def describe(admin: Kube, name: str, operator: OperatorProcess) -> str:
    st = chaos_status(admin, name)
    slim = {k: st.get(k) for k in ("phase", "verdict", "message", "mttrSeconds", "availability")}
    timeline = [f"{e.get('time')} {e.get('message')}" for e in st.get("timeline", [])[-25:]]
    stopped = f"\nlast operator stop: {operator.last_stop}" if operator.last_stop else ""
    return f"status: {slim}\ntimeline: {timeline}{stopped}\noperator log:\n{operator.logs(40)}"


def agent_token(admin: Kube) -> str:
    secret = admin.get(path("Secret", E2E_NS, b.secret_name(NAME)))
    assert secret is not None
    return base64.b64decode(secret["data"]["token"]).decode()


def active_faults(admin: Kube, cluster: Cluster) -> dict[str, list[str]]:
    token = agent_token(admin)

    async def run() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for member, address in cluster.agent_addresses().items():
            client = AgentClient(address, token, timeout=3.0)
            try:
                listing = await client.list()
                out[member] = [f.fault.id for f in listing.faults]
            finally:
                await client.close()
        return out

    return asyncio.run(run())


def test_agents_listen_on_a_port_of_their_own_not_on_the_data_port(cluster: Cluster, admin: Kube) -> None:
    token = agent_token(admin)
    agents, data = cluster.agent_addresses(), cluster.addresses()
    assert set(agents) == set(data) == {"n1", "n2", "n3"}

    async def run() -> None:
        for member in sorted(agents):
            async with AgentClient(agents[member], token, timeout=3.0) as agent:
                assert (await agent.list()).node_id == member
            async with AgentClient(data[member], token, timeout=3.0) as on_data_port:
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await on_data_port.list()
                assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED, f"{member}'s data port serves the agent"

    asyncio.run(run())


def test_leader_partition_completes_linearizable_with_mttr(cluster: Cluster, admin: Kube,
                                                          operator: OperatorProcess) -> None:
    name = "leader-partition"
    cluster.wait_stable_leader()
    admin.create(experiment(name, duration=8, fault_seconds=3))
    st = wait_for(lambda: (s := chaos_status(admin, name)).get("phase") in ("Completed", "Aborted", "Failed")
                  and s.get("checks") and s, timeout=150, what="the experiment to finish",
                  describe=lambda: describe(admin, name, operator))
    assert st["phase"] == "Completed", describe(admin, name, operator)
    assert st["verdict"] == "Passed", describe(admin, name, operator)
    checks = {c["name"]: c["result"] for c in st["checks"]}
    assert checks == {"linearizable": "Passed", "noLostWrites": "Passed"}, st["checks"]
    assert st.get("mttrSeconds") is not None and st["mttrSeconds"] >= 0, describe(admin, name, operator)
    assert 0 < st.get("availability", 0) <= 1
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert conditions == {"Ready": "True", "Progressing": "False", "Degraded": "False"}, st["conditions"]
    injected = st["injectedFaults"]
    assert injected and all(f.get("recoveredAt") for f in injected)
    obj = admin.get(path("ChaosExperiment", E2E_NS, name))
    assert obj is not None and "faultlab.dev/finalizer" in obj["metadata"].get("finalizers", [])
    reasons = {e["reason"] for e in admin.list(path("Event", E2E_NS), fields=f"involvedObject.name={name}")}
    assert {"Injecting", "RollingBack", "Completed"} <= reasons, reasons
    assert not any(active_faults(admin, cluster).values())
    cluster.wait_ready(3, timeout=60, what="the cluster to settle after the experiment")


def test_operator_killed_mid_experiment_resumes_and_rolls_back(cluster: Cluster, admin: Kube,
                                                              operator: OperatorProcess) -> None:
    name = "interrupted"
    cluster.wait_stable_leader()
    admin.create(experiment(name, duration=30, fault_seconds=30))

    def injected() -> bool:
        st = chaos_status(admin, name)
        return st.get("phase") in ("Injecting", "Observing") and any(
            f.get("injectedAt") for f in st.get("injectedFaults", []))

    wait_for(injected, timeout=90, what="the first injection", describe=lambda: describe(admin, name, operator))
    assert any(active_faults(admin, cluster).values()), "a fault should be in effect"
    operator.kill()  # SIGTERM, as a pod deletion on a real cluster; SIGKILL only after the grace period
    operator.start()
    st = wait_for(lambda: (s := chaos_status(admin, name)).get("phase") == "Completed" and s.get("verdict") and s,
                  timeout=120, what="the resumed experiment to complete",
                  describe=lambda: describe(admin, name, operator))
    assert st["verdict"] == "Inconclusive"  # an interrupted history proves nothing either way
    assert all(f.get("recoveredAt") for f in st["injectedFaults"]), st["injectedFaults"]
    assert not any(active_faults(admin, cluster).values()), "no fault may remain after the resume"
    reasons = {e["reason"] for e in admin.list(path("Event", E2E_NS), fields=f"involvedObject.name={name}")}
    assert "Resuming" in reasons
    cluster.wait_ready(3, timeout=60)


def test_a_replaced_target_pod_is_recorded_and_deleting_rolls_back_first(cluster: Cluster, admin: Kube,
                                                                        operator: OperatorProcess) -> None:
    name = "deleted-midway"
    cluster.wait_stable_leader()
    admin.create(experiment(name, duration=30, fault_seconds=30))
    st = wait_for(lambda: (s := chaos_status(admin, name)) and any(f.get("injectedAt") for f in s.get(
        "injectedFaults", [])) and s, timeout=90, what="the first injection",
                  describe=lambda: describe(admin, name, operator))
    primary = {f["member"] for f in st["journal"]["faults"] if f["primary"]}  # the cut-off leader
    bystander = next(m for m in ("n1", "n2", "n3") if m not in primary)  # holds only the mirror side
    admin.delete(path("Pod", E2E_NS, b.pod_name(NAME, bystander)), grace_seconds=0)

    def recorded() -> bool:
        events = admin.list(path("Event", E2E_NS), fields=f"involvedObject.name={name}")
        return any(e["reason"] == "TargetPodReplaced" and b.pod_name(NAME, bystander) in e["message"]
                   for e in events)

    wait_for(recorded, timeout=60, what="the replaced target pod to be recorded on the experiment",
             describe=lambda: describe(admin, name, operator))
    admin.delete(path("ChaosExperiment", E2E_NS, name))
    wait_for(lambda: admin.get(path("ChaosExperiment", E2E_NS, name)) is None, timeout=60,
             what="the experiment to be rolled back and deleted", describe=lambda: describe(admin, name, operator))
    assert not any(active_faults(admin, cluster).values())
