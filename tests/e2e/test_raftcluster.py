"""A RaftCluster through the operator: bootstrap, client traffic, scaling, a lost leader, a rolling restart.

The tests share one cluster and run in order (each leaves it Ready with 3 voters).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from faultlab.nodes.raft.client import RaftClient, RaftError
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.kube import Kube, path
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc
from tests.e2e.conftest import E2E_NS
from tests.e2e.harness import OperatorProcess, PodAccess, wait_for
from tests.support.kubelet import describe

pytestmark = pytest.mark.timeout(300)
NAME = "demo"
TIMINGS = {"tickMs": 20, "electionTicks": 15, "heartbeatTicks": 3}


def raft_cluster(replicas: int, image: str = "ghcr.io/faultlab/faultlab:e2e-1", name: str = NAME) -> dict[str, Any]:
    return {"apiVersion": "faultlab.dev/v1alpha1", "kind": "RaftCluster",
            "metadata": {"name": name, "namespace": E2E_NS},
            "spec": {"replicas": replicas, "image": image, "timings": TIMINGS}}


class Cluster:
    """The test's view of the RaftCluster: its status, its pods, a KV client."""

    def __init__(self, kube: Kube, pods: PodAccess, operator: OperatorProcess, name: str = NAME) -> None:
        self.kube = kube
        self.pods = pods
        self.operator = operator
        self.name = name

    def get(self) -> dict[str, Any]:
        obj = self.kube.get(path("RaftCluster", E2E_NS, self.name))
        assert obj is not None
        return obj

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def describe(self) -> str:
        st = self.status()
        slim = {k: st.get(k) for k in ("phase", "leader", "term", "readyReplicas")}
        conds = [(c["type"], c["status"], c.get("message", "")) for c in st.get("conditions", [])]
        members = [(m["id"], m["role"], m["ready"], m["voter"]) for m in st.get("members", [])]
        return (f"status: {slim}\nconditions: {conds}\nmembers: {members}\npods: {describe(self.kube, E2E_NS)}\n"
                f"operator log:\n{self.operator.logs(40)}")

    def condition(self, kind: str) -> bool:
        return any(c["type"] == kind and c["status"] == "True" for c in self.status().get("conditions", []))

    def ready_voters(self) -> list[str]:
        return sorted(m["id"] for m in self.status().get("members", []) if m["voter"] and m["ready"])

    def wait_ready(self, voters: int, timeout: float = 90, what: str = "") -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            st = self.status()
            ids = [f"n{i}" for i in range(1, voters + 1)]
            members = st.get("members", [])
            ok = (self.condition("Ready") and not self.condition("Progressing") and st.get("leader")
                  and self.ready_voters() == sorted(ids) and len(members) == voters
                  and st.get("observedGeneration") == self.get()["metadata"]["generation"])
            return st if ok else None

        return wait_for(done, timeout=timeout, what=what or f"{voters} ready voters and a leader",
                        describe=self.describe)

    def wait_stable_leader(self, timeout: float = 60) -> str:
        """Every member reports the same leader, which reports itself leading (the status may lag a pass)."""
        def agreed() -> str | None:
            replies = asyncio.run(_statuses(self))
            leaders = {r.leader_id for r in replies.values() if r is not None}
            if len(replies) != 3 or None in replies.values() or len(leaders) != 1:
                return None
            leader = leaders.pop()
            return leader if leader and replies[leader] and replies[leader].role == pb.ROLE_LEADER else None

        return wait_for(agreed, timeout=timeout, what="all members to agree on a leader", describe=self.describe)

    def addresses(self) -> dict[str, str]:
        out = {}
        for m in self.status().get("members", []):
            try:
                out[m["id"]] = self.pods.address(E2E_NS, b.pod_name(self.name, m["id"]), b.GRPC_PORT)
            except LookupError:
                pass
        return out

    def agent_addresses(self) -> dict[str, str]:
        """Where each member's FaultAgent listens (its pod's agent port), as the test process dials it."""
        out = {}
        for m in self.status().get("members", []):
            pod = b.pod_name(self.name, m["id"])
            obj = self.kube.get(path("Pod", E2E_NS, pod))
            try:
                out[m["id"]] = self.pods.address(E2E_NS, pod, b.agent_port(obj or {}))
            except LookupError:
                pass
        return out

    def patch_spec(self, spec: dict[str, Any]) -> None:
        self.kube.patch(path("RaftCluster", E2E_NS, self.name), {"spec": spec})

    def delete(self) -> None:
        """Delete it and its pods (garbage collection would, within its resync period), freeing the CPU."""
        self.kube.delete(path("RaftCluster", E2E_NS, self.name))
        for pod in self.kube.list(path("Pod", E2E_NS), labels=b.selector_labels(self.name)):
            self.kube.delete(path("Pod", E2E_NS, pod["metadata"]["name"]), grace_seconds=1)
        wait_for(lambda: not self.kube.list(path("Pod", E2E_NS), labels=b.selector_labels(self.name)),
                 timeout=60, what=f"the pods of {self.name} to be garbage-collected")


async def member_status(address: str) -> pb.StatusResponse | None:
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            return await pb_grpc.ClusterStub(ch).Status(pb.StatusRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return None


class Writer:
    """Writes k-0, k-1, ... in a thread; records acknowledged writes and the longest gap between acks."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.acked: dict[str, str] = {}
        self.errors = 0
        self.max_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        i = 0
        last_ack = time.monotonic()
        while not self._stop.is_set():
            client = RaftClient(self.cluster.addresses(), timeout=3.0, attempt_timeout=0.5)
            try:
                for _ in range(20):
                    if self._stop.is_set():
                        break
                    key, value = f"k-{i}", f"v-{i}"
                    try:
                        await client.put(key, value)
                        now = time.monotonic()
                        self.max_gap = max(self.max_gap, now - last_ack)
                        last_ack = now
                        self.acked[key] = value
                    except RaftError:
                        self.errors += 1
                    i += 1
                    await asyncio.sleep(0.02)
            finally:
                await client.close()

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def read_all(cluster: Cluster, keys: dict[str, str]) -> dict[str, str | None]:
    async def run() -> dict[str, str | None]:
        client = RaftClient(cluster.addresses(), timeout=10.0)
        try:
            out: dict[str, str | None] = {}
            for key in keys:
                value = await client.get(key)
                out[key] = value.decode() if value is not None else None
            return out
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def cluster(admin: Kube, operator: OperatorProcess, pods: PodAccess) -> Iterator[Cluster]:
    admin.create(raft_cluster(3))
    c = Cluster(admin, pods, operator)
    c.wait_ready(3, timeout=120, what="a new 3-member RaftCluster to be Ready with a leader")
    yield c
    c.delete()


def test_three_members_ready_with_a_leader(cluster: Cluster, admin: Kube) -> None:
    st = cluster.status()
    assert st["phase"] == "Running" and st["leader"] in ("n1", "n2", "n3") and st["term"] >= 1
    assert st["readyReplicas"] == 3
    names = {p["metadata"]["name"] for p in admin.list(path("Pod", E2E_NS), labels=b.selector_labels(NAME))}
    assert names == {"demo-1", "demo-2", "demo-3"}
    for kind, name in (("Service", "demo-peers"), ("Service", "demo"), ("ConfigMap", "demo-config"),
                       ("Secret", "demo-agent-token"), ("PodDisruptionBudget", "demo")):
        obj = admin.get(path(kind, E2E_NS, name))
        assert obj is not None, f"{kind} {name} missing"
        assert obj["metadata"]["ownerReferences"][0]["name"] == NAME
    assert not cluster.get()["metadata"].get("finalizers"), "a RaftCluster needs no finalizer"
    statuses = asyncio.run(_statuses(cluster))
    leaders = {s.leader_id for s in statuses.values() if s is not None}
    assert leaders == {st["leader"]}


async def _statuses(cluster: Cluster) -> dict[str, pb.StatusResponse | None]:
    addresses = cluster.addresses()
    replies = await asyncio.gather(*(member_status(a) for a in addresses.values()))
    return dict(zip(addresses, replies, strict=True))


def test_write_and_read_through_the_client(cluster: Cluster) -> None:
    async def run() -> bytes | None:
        async with RaftClient(cluster.addresses(), timeout=10.0) as client:
            await client.put("greeting", "hello")
            return await client.get("greeting")

    assert asyncio.run(run()) == b"hello"


def test_scale_up_and_down_keeps_every_acknowledged_write(cluster: Cluster) -> None:
    with Writer(cluster) as writer:
        cluster.patch_spec({"replicas": 5})
        cluster.wait_ready(5, timeout=120, what="scale up to 5 voters")
        cluster.patch_spec({"replicas": 3})
        cluster.wait_ready(3, timeout=120, what="scale down to 3 voters")
    assert len(writer.acked) > 20, f"too few writes acknowledged ({len(writer.acked)}, {writer.errors} errors)"
    values = read_all(cluster, writer.acked)
    lost = [k for k, v in writer.acked.items() if values[k] != v]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    assert cluster.kube.get(path("Pod", E2E_NS, "demo-5")) is None


def test_deleted_leader_pod_is_replaced_and_rejoins(cluster: Cluster, admin: Kube) -> None:
    before = cluster.status()
    old_leader = before["leader"]
    pod = admin.get(path("Pod", E2E_NS, b.pod_name(NAME, old_leader)))
    assert pod is not None
    admin.delete(path("Pod", E2E_NS, pod["metadata"]["name"]), grace_seconds=0)

    def new_leader() -> str | None:
        leader = cluster.status().get("leader")
        return leader if leader and leader != old_leader else None

    wait_for(new_leader, timeout=60, what="a new leader after the leader's pod was deleted", describe=cluster.describe)
    cluster.wait_ready(3, timeout=120, what=f"{old_leader}'s pod to return and rejoin")
    back = admin.get(path("Pod", E2E_NS, pod["metadata"]["name"]))
    assert back is not None and back["metadata"]["uid"] != pod["metadata"]["uid"]


def test_image_change_rolls_one_pod_at_a_time_leader_last(cluster: Cluster, admin: Kube) -> None:
    leader_before = cluster.status()["leader"]
    old = {p["metadata"]["name"]: p["metadata"]["uid"]
           for p in admin.list(path("Pod", E2E_NS), labels=b.selector_labels(NAME))}
    replaced_order: list[str] = []

    def progress() -> bool:
        pods = {p["metadata"]["name"]: p for p in admin.list(path("Pod", E2E_NS), labels=b.selector_labels(NAME))}
        for name, uid in old.items():
            pod = pods.get(name)
            if name not in replaced_order and (pod is None or pod["metadata"]["uid"] != uid):
                replaced_order.append(name)
        gone = [n for n in old if n not in pods or pods[n]["metadata"]["uid"] != old[n]]
        not_ready = [n for n, p in pods.items() if not any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))]
        assert len(set(gone) & set(not_ready) | {n for n in old if n not in pods}) <= 1, \
            f"more than one member down at once: gone={gone} not_ready={not_ready}"
        return len(replaced_order) == len(old) and cluster.condition("Ready") and not cluster.condition(
            "Progressing") and len(cluster.ready_voters()) == 3

    with Writer(cluster) as writer:
        cluster.patch_spec({"image": "ghcr.io/faultlab/faultlab:e2e-2"})
        wait_for(progress, timeout=180, interval=0.1, what="a rolling restart of every member",
                 describe=cluster.describe)
    assert replaced_order[-1] == b.pod_name(NAME, leader_before), \
        f"the leader ({leader_before}) must restart last; order was {replaced_order}"
    pods = admin.list(path("Pod", E2E_NS), labels=b.selector_labels(NAME))
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"ghcr.io/faultlab/faultlab:e2e-2"}
    values = read_all(cluster, writer.acked)
    assert all(values[k] == v for k, v in writer.acked.items()), "an acknowledged write was lost"
    # Availability: a gap in acknowledged writes no longer than a leader election (plus slack for 2 cores).
    assert writer.max_gap < 5.0, f"writes stalled for {writer.max_gap:.1f}s during the rolling restart"


def test_operator_metrics_and_events(cluster: Cluster, operator: OperatorProcess, admin: Kube) -> None:
    text = operator.metrics()
    assert "faultlab_operator_reconciles_total" in text
    events = admin.list(path("Event", E2E_NS), fields=f"involvedObject.name={NAME}")
    reasons = {e["reason"] for e in events}
    assert {"Bootstrapping", "LearnerAdded", "MemberPromoted"} <= reasons, reasons
