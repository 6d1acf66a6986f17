"""A resumed engine verifies the whole steady state on a real cluster, workload probes included.

The interrupted run's workload died with its engine; the resumed one starts a fresh
workload for the verification, so workloadErrorRate/workloadLatency probes measure the
cluster after the rollback instead of reporting that they need a workload.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultlab.nodes.agent.client import AgentClient, fault_from_spec
from faultlab.operator.api import ChaosExperiment, RaftCluster, load_one
from faultlab.operator.chaos.engine import Engine, EngineOptions
from faultlab.operator.chaos.journal import ExperimentState, FaultRecord, FaultStatus, FileStateStore, Phase
from faultlab.operator.runtime.base import TargetRef
from faultlab.operator.runtime.local import LocalRuntime

pytestmark = pytest.mark.timeout(180)

TARGET = TargetRef("RaftCluster", "resumed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = LocalRuntime(tmp_path_factory.mktemp("chaos-resume"))
    c = load_one("apiVersion: faultlab.dev/v1alpha1\nkind: RaftCluster\nmetadata: {name: resumed}\n"
                 "spec: {replicas: 3}\n", RaftCluster)
    asyncio.run(rt.up(c))
    yield rt
    asyncio.run(rt.down(c.name))


async def test_a_resumed_run_restarts_the_workload_and_verifies_its_probes(cluster: LocalRuntime,
                                                                         tmp_path: Path) -> None:
    rt = cluster
    await rt.wait_for_leader("resumed", 20)
    exp = ChaosExperiment.model_validate({
        "apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment", "metadata": {"name": "resumed"},
        "spec": {"target": {"name": "resumed"}, "checks": ["linearizable"],
                 "workload": {"enabled": True, "clients": 2, "keys": 4},
                 "faults": [{"name": "slow", "type": "delay", "target": {"members": ["n1"]}}],
                 "steadyState": {"probes": [
                     {"name": "errors", "type": "workloadErrorRate", "tolerance": {"max": 0.2}},
                     {"name": "latency", "type": "workloadLatency", "tolerance": {"maxMs": 2000}}]}}})
    members = {m.id: m for m in await rt.members(TARGET)}
    token = await rt.agent_token(TARGET)
    fid = "fl-dead0001-0-n1-1"
    async with AgentClient(members["n1"].agent_address, token) as agent:  # what the interrupted engine left
        await agent.inject(fault_from_spec("delay", {"latencyMs": 50}, id=fid, ttl_seconds=120, match=None))
        started_at = (await agent.list()).started_at
    state = ExperimentState("resumed", "dead0001", exp.to_dict(), 7, phase=Phase.OBSERVING)
    state.members = {m: x.address for m, x in members.items()}
    state.agents = {m: x.agent_address for m, x in members.items()}
    state.faults.append(FaultRecord(id=fid, member="n1", address=members["n1"].address, type="delay",
                                    mechanism="agent", step=0, fault_index=0, fault_name="slow", ttl_seconds=120,
                                    status=FaultStatus.ACTIVE, agent_started_at=started_at, injected_at=1.0))
    store = FileStateStore(tmp_path / "journal.json")
    store.save(state)

    report = await Engine.resume(store, rt, EngineOptions(html=False, out_dir=tmp_path, settle_s=1.0))

    assert report is not None
    assert report["rollback_confirmed"] is True
    assert report["steady_state_after"] is True, [e["message"] for e in report["timeline"]]
    messages = [e["message"] for e in report["timeline"]]
    assert any(m.startswith("workload started to verify the steady state") for m in messages)
    assert "steady state verified after rollback" in messages
    stopped = next(m for m in messages if m.startswith("verification workload stopped"))
    assert not stopped.startswith("verification workload stopped: 0 of"), stopped
    assert report["verdict"] == "Inconclusive", "an interrupted history proves nothing either way"
    assert report["metrics"]["availability"]["overall"] is None, "no availability claimed for a lost history"
    async with AgentClient(members["n1"].agent_address, token) as agent:
        assert not (await agent.list()).faults
