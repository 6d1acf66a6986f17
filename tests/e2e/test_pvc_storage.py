"""A RaftCluster on PersistentVolumeClaims: scaling down deletes the leaving member's claim, so a member
added again later starts empty instead of on the old member's log.

Run under the chart's RBAC (conftest.py), so a verb on persistentvolumeclaims the chart does not grant
leaves the claim behind and fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from faultlab.nodes.raft.client import RaftClient
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.kube import Kube, path
from tests.e2e.conftest import E2E_NS
from tests.e2e.harness import OperatorProcess, PodAccess, wait_for
from tests.e2e.test_raftcluster import Cluster, raft_cluster

pytestmark = pytest.mark.timeout(300)
NAME = "durable"
EMPTY_START = "member n4 recovered: term 0, 0 entries after snapshot 0"  # nodes/raft/node.py, on open()


@pytest.fixture(scope="module")
def cluster(admin: Kube, operator: OperatorProcess, pods: PodAccess) -> Iterator[Cluster]:
    body = raft_cluster(3, name=NAME)
    body["spec"]["storage"] = {"type": "pvc", "size": "64Mi"}
    admin.create(body)
    c = Cluster(admin, pods, operator, name=NAME)
    c.wait_ready(3, timeout=120, what="a 3-member RaftCluster on PVCs to be Ready")
    yield c
    c.delete()
    for pvc in admin.list(path("PersistentVolumeClaim", E2E_NS), labels=b.selector_labels(NAME)):
        admin.delete(path("PersistentVolumeClaim", E2E_NS, pvc["metadata"]["name"]))


def claim(admin: Kube, member: str) -> dict[str, Any] | None:
    return admin.get(path("PersistentVolumeClaim", E2E_NS, b.pvc_name(NAME, member)))


def claim_uids(admin: Kube) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"]
            for p in admin.list(path("PersistentVolumeClaim", E2E_NS), labels=b.selector_labels(NAME))}


def put_all(cluster: Cluster, items: dict[str, str]) -> None:
    async def run() -> None:
        async with RaftClient(cluster.addresses(), timeout=10.0) as client:
            for key, value in items.items():
                await client.put(key, value)

    asyncio.run(run())


def get_all(cluster: Cluster, keys: list[str]) -> dict[str, str | None]:
    async def run() -> dict[str, str | None]:
        async with RaftClient(cluster.addresses(), timeout=10.0) as client:
            values = {key: await client.get(key) for key in keys}
        return {k: v.decode() if v is not None else None for k, v in values.items()}

    return asyncio.run(run())


def test_scale_down_deletes_the_claim_and_a_readded_member_starts_empty(cluster: Cluster, admin: Kube,
                                                                         pods: PodAccess) -> None:
    first = {f"before-{i}": f"v{i}" for i in range(10)}
    put_all(cluster, first)
    survivors = claim_uids(admin)
    assert set(survivors) == {b.pvc_name(NAME, m) for m in ("n1", "n2", "n3")}, survivors

    cluster.patch_spec({"replicas": 4})
    cluster.wait_ready(4, timeout=120, what="scale up to 4 voters on PVCs")
    old = claim(admin, "n4")
    assert old is not None, "the operator made no claim for n4"
    old_uid = old["metadata"]["uid"]
    second = {f"with-n4-{i}": f"w{i}" for i in range(10)}
    put_all(cluster, second)
    wait_for(lambda: any(m["id"] == "n4" and m["appliedIndex"] >= len(first) + len(second)
                         for m in cluster.status().get("members", [])),
             timeout=30, what="n4 to apply the writes (so its volume holds data)", describe=cluster.describe)

    cluster.patch_spec({"replicas": 3})
    cluster.wait_ready(3, timeout=120, what="scale down to 3 voters")

    def old_claim_gone() -> bool:
        now = claim(admin, "n4")
        return now is None or now["metadata"]["uid"] != old_uid

    wait_for(old_claim_gone, timeout=60, what=f"the claim of the removed member ({b.pvc_name(NAME, 'n4')}) to "
             "be deleted", describe=lambda: f"claim: {claim(admin, 'n4')}\n{cluster.describe()}")
    assert claim_uids(admin) == survivors, "the remaining members keep their claims"

    cluster.patch_spec({"replicas": 4})
    cluster.wait_ready(4, timeout=120, what="n4 added again")
    new = claim(admin, "n4")
    assert new is not None and new["metadata"]["uid"] != old_uid
    log = pods.logs(E2E_NS, b.pod_name(NAME, "n4"), "raft")
    assert EMPTY_START in log, f"the re-added n4 did not start empty:\n{log[-3000:]}"
    values = get_all(cluster, [*first, *second])
    assert values == {**first, **second}, "an acknowledged write was lost"
    assert {k: v for k, v in claim_uids(admin).items() if k != b.pvc_name(NAME, "n4")} == survivors
