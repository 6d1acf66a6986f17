"""Operator pieces without a cluster: the leader Lease, the experiment status mapping, RBAC files."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml

from faultlab.operator.chaos.journal import Event, ExperimentState, FaultRecord, FaultStatus, Phase
from faultlab.operator.reconcile.chaos import status_from_report, status_from_state
from faultlab.operator.reconcile.kube import ApiError
from faultlab.operator.reconcile.leader import LeaseElector, _micro

ROOT = Path(__file__).resolve().parents[2]


class FakeLeases:
    """Just enough of Kube for a Lease: get/create/replace with resourceVersion conflicts."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0

    def get(self, _: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.obj)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.obj is not None:
            raise ApiError(409, "exists")
        self.version += 1
        self.obj = {**copy.deepcopy(obj), "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        return copy.deepcopy(self.obj)

    def replace(self, _: str, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.obj is not None
        if obj["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "conflict")
        self.version += 1
        self.obj = copy.deepcopy(obj)
        self.obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.obj)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_one_leader_until_the_lease_expires_or_is_released() -> None:
    store = FakeLeases()
    clock = Clock()
    a = LeaseElector(store, "ns", identity="a", duration_s=15, monotonic=clock)  # type: ignore[arg-type]
    b = LeaseElector(store, "ns", identity="b", duration_s=15, monotonic=clock)  # type: ignore[arg-type]
    assert a.try_acquire() and not b.try_acquire()
    assert a.try_acquire()  # renewing
    a.release()
    assert b.try_acquire() and not a.try_acquire()
    assert store.obj is not None and store.obj["spec"]["leaseTransitions"] == 1
    clock.t += 14  # b stopped renewing: a has seen the same record for 14 s of its own clock
    assert not a.try_acquire()
    clock.t += 2
    assert a.try_acquire() and store.obj["spec"]["holderIdentity"] == "a"


def test_a_skewed_wall_clock_neither_steals_a_live_lease_nor_keeps_a_dead_one() -> None:
    store = FakeLeases()
    clock = Clock()
    a = LeaseElector(store, "ns", identity="a", duration_s=15, monotonic=clock)  # type: ignore[arg-type]
    # b's machine is an hour ahead, c's an hour behind: the renewTime a writes looks ancient to
    # b and in the future to c. Neither may matter.
    b = LeaseElector(store, "ns", identity="b", duration_s=15, monotonic=clock,  # type: ignore[arg-type]
                     wall=lambda: time.time() + 3600)
    c = LeaseElector(store, "ns", identity="c", duration_s=15, monotonic=clock,  # type: ignore[arg-type]
                     wall=lambda: time.time() - 3600)
    assert a.try_acquire()
    for _ in range(5):  # a renews every 5 s: b and c see the record change and never take over
        clock.t += 5
        assert not b.try_acquire() and not c.try_acquire()
        assert a.try_acquire()
    assert not b.try_acquire()  # b observes a's last renewal here
    clock.t += 16  # then a stops renewing: after one duration a replica takes over, whatever its clock
    assert not c.try_acquire(), "c saw this record only now: it waits one duration of its own"
    assert b.try_acquire() and store.obj is not None and store.obj["spec"]["holderIdentity"] == "b"
    assert _micro(time.time() + 3500) < store.obj["spec"]["renewTime"], "b writes its own wall clock"


def test_experiment_status_from_the_journal_and_the_report() -> None:
    state = ExperimentState(name="x", run_id="r", spec={}, seed=1, phase=Phase.OBSERVING, started_at=1000.0)
    state.faults.append(FaultRecord(id="f1", member="n1", address="a", type="partition", mechanism="agent", step=0,
                                    fault_index=0, fault_name="cut", ttl_seconds=20, injected_at=1001.0,
                                    status=FaultStatus.ACTIVE, agent_started_at=900.0))
    state.timeline.append(Event(at=1001.0, kind="inject", message="injected cut", data={"member": "n1",
                                                                                         "fault": "f1"}))
    status = status_from_state(state)
    assert status["phase"] == "Observing" and status["startedAt"] == "1970-01-01T00:16:40Z"
    assert status["injectedFaults"] == [{"fault": "cut", "faultId": "f1", "type": "partition", "member": "n1",
                                         "detail": "", "agentStartedAt": 900.0, "injectedAt": "1970-01-01T00:16:41Z",
                                         "expiresAt": "1970-01-01T00:17:01Z"}]
    assert status["timeline"][0] == {"time": "1970-01-01T00:16:41Z", "type": "inject", "message": "injected cut",
                                     "member": "n1", "fault": "f1"}
    report = {"metrics": {"availability": {"overall": 0.97}, "error_rate": {"overall": 0.03}, "mttr_s": 1.2,
                          "time_to_detect_s": 0.4,
                          "latency": {"before": {"p50_ms": 2.0, "p99_ms": 9.0, "ops": 10}, "during": {}, "after": {}}},
              "checks": [{"name": "linearizable", "result": "Passed", "message": "ok", "operations": 50}]}
    extra = status_from_report(report)
    assert extra["availability"] == 0.97 and extra["mttrSeconds"] == 1.2 and extra["timeToDetectSeconds"] == 0.4
    assert extra["latency"]["before"] == {"p50Ms": 2.0, "p99Ms": 9.0}
    assert extra["checks"] == [{"name": "linearizable", "result": "Passed", "message": "ok", "operations": 50}]


def test_rbac_has_no_wildcards_and_no_cluster_scope_beyond_its_role() -> None:
    docs = [d for f in sorted((ROOT / "deploy" / "rbac").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d and d.get("kind") in ("ClusterRole", "Role")]
    assert docs
    for doc in docs:
        for rule in doc["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{doc['metadata']['name']}: wildcard in {key}"
            assert not {"nodes", "namespaces", "clusterroles", "customresourcedefinitions"} & set(rule["resources"])
