"""The engine's lifecycle against in-memory agents: journal-before-act, rollback, dry run, abort, pause, resume.

These test the engine's bookkeeping only; tests/integration/test_chaos_*.py run the same
engine against real nodes and real agents.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from faultlab.operator.api import ChaosExperiment
from faultlab.operator.chaos.engine import Engine, EngineOptions
from faultlab.operator.chaos.journal import (
    ExperimentState,
    FaultRecord,
    FaultStatus,
    FileStateStore,
    MemoryStateStore,
    Phase,
)
from faultlab.operator.chaos.probes import ClusterView, MemberStatus
from faultlab.operator.cli import cli
from tests.unit.test_chaos_fakes import FakeRuntime, steady_cluster_view


@pytest.fixture(autouse=True)
def fake_statuses(monkeypatch: pytest.MonkeyPatch) -> None:
    steady_cluster_view(monkeypatch)


def doc(faults: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment", "metadata": {"name": "unit"},
            "spec": {"target": {"name": "c"}, "faults": faults, "workload": {"enabled": False}, "checks": [],
                     "durationSeconds": 0.6, **spec}}


def options(rt: FakeRuntime, **kw: Any) -> EngineOptions:
    base: dict[str, Any] = {"warmup_s": 0.0, "settle_s": 0.1, "after_s": 0.0, "tick_s": 0.02,
                            "probe_interval_s": 0.05, "agent_factory": rt.agent_factory, "seed": 1}
    base.update(kw)
    return EngineOptions(**base)


def run(exp_doc: dict[str, Any], rt: FakeRuntime, store: Any = None, **kw: Any) -> tuple[dict[str, Any], Any]:
    store = store or MemoryStateStore()
    exp = ChaosExperiment.model_validate(exp_doc)
    report = asyncio.run(Engine(exp, rt, store, options(rt, **kw)).run())
    return report, store


def test_partition_is_injected_on_both_sides_journaled_first_and_rolled_back() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    store = MemoryStateStore()
    seen_before_inject: list[bool] = []
    for agent in rt.agents.values():
        original = agent.inject

        async def inject(fault: Any, *, timeout: float | None = None, _orig: Any = original) -> Any:
            saved = store.saved or {}
            seen_before_inject.append(any(f["id"] == fault.id and f["status"] == "injecting"
                                          for f in saved.get("faults", [])))
            return await _orig(fault, timeout=timeout)

        agent.inject = inject  # type: ignore[method-assign]
    report, _ = run(doc([{"name": "cut", "type": "partition", "target": {"role": "leader"}}]), rt, store)
    assert seen_before_inject == [True, True, True], "every fault is journaled before Inject is called"
    by_member = {f["member"]: f for f in report["faults"]}
    assert by_member["n1"]["peers"] == ["n2", "n3"] and by_member["n1"]["primary"]
    assert by_member["n2"]["peers"] == ["n1"] and not by_member["n2"]["primary"]
    assert all(not a.active for a in rt.agents.values()), "rollback leaves no fault in any agent"
    assert report["rollback_confirmed"] is True
    assert report["verdict"] == "Passed"
    phases = [e["message"].split(":")[0] for e in report["timeline"] if e["kind"] == "phase"]
    assert phases == ["Pending", "SteadyStateCheck", "Injecting", "Observing", "RollingBack", "Verifying",
                      "Checking", "Completed"]
    ttl = {f["ttl_s"] for f in report["faults"]}
    assert all(t >= 10 for t in ttl), "each fault carries a TTL of its duration plus a margin"


def test_dry_run_injects_nothing_and_lists_the_targets() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    report, store = run(doc([{"name": "slow", "type": "delay", "target": {"mode": "all"}}], dryRun=True), rt)
    assert not any(a.calls for a in rt.agents.values())
    assert report["verdict"] is None and report["phase"] == "DryRun"
    assert report["plan"][0]["faults"][0]["targets"] == ["n1", "n2", "n3"]
    assert store.load().phase == Phase.DRY_RUN


def test_abort_condition_rolls_back_within_two_seconds() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    exp = doc([{"name": "slow", "type": "delay", "target": {"mode": "one"}, "durationSeconds": 30}],
              durationSeconds=30,
              abortConditions=[{"probe": {"name": "always-bad", "type": "command", "command": ["false"],
                                          "everySeconds": 0.05}}])
    started = time.monotonic()
    report, _ = run(exp, rt)
    assert time.monotonic() - started < 10
    assert report["verdict"] == "Aborted"
    abort = next(e for e in report["timeline"] if e["kind"] == "abort")
    recovered = [e["at"] for e in report["timeline"] if e["kind"] == "recover"]
    assert recovered and max(recovered) - abort["data"]["breach_at"] < 2.0
    assert all(not a.active for a in rt.agents.values())


def test_pause_rolls_back_and_unpause_injects_again() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    t0 = time.time()

    def paused() -> bool:
        return 0.5 < time.time() - t0 < 1.2

    report, _ = run(doc([{"name": "slow", "type": "delay", "target": {"mode": "one"}, "durationSeconds": 2}],
                        durationSeconds=2), rt, paused=paused)
    kinds = [e["kind"] for e in report["timeline"]]
    assert "pause" in kinds
    injected = [e for e in report["timeline"] if e["kind"] == "inject"]
    assert len(injected) == 2, "injected once, rolled back on pause, injected again on unpause"
    assert injected[0]["data"]["fault"] != injected[1]["data"]["fault"]
    assert all(not a.active for a in rt.agents.values())


def test_kill_and_pause_use_the_runtime() -> None:
    rt = FakeRuntime(["n1", "n2", "n3", "n4", "n5"])
    report, _ = run(doc([{"name": "k", "type": "kill", "target": {"role": "leader"}},
                         {"name": "p", "type": "pause", "target": {"role": "follower"}}]), rt)
    assert rt.killed == ["n1"]
    assert not rt.paused
    assert report["rollback_confirmed"] is True
    assert {e["kind"] for e in report["timeline"]} >= {"restart", "recover"}


def test_resume_rolls_back_everything_the_journal_lists(tmp_path: Path) -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    exp = ChaosExperiment.model_validate(doc([{"name": "slow", "type": "delay"}]))
    state = ExperimentState("unit", "abcd", exp.to_dict(), 5, phase=Phase.OBSERVING)
    state.members = {m: rt.address(m) for m in rt.ids}
    fault_fields = {"address": "", "step": 0, "fault_index": 0, "fault_name": "slow", "ttl_seconds": 30}
    for i, (member, status) in enumerate([("n1", FaultStatus.ACTIVE), ("n2", FaultStatus.INJECTING)]):
        fid = f"fl-abcd-0-{member}-{i}"
        state.faults.append(FaultRecord(id=fid, member=member, type="delay", mechanism="agent", status=status,
                                        **fault_fields))  # type: ignore[arg-type]
        rt.agents[member].active[fid] = __import__("faultlab.protos.agent.v1.agent_pb2", fromlist=["x"]).Fault(id=fid)
    state.faults.append(FaultRecord(id="fl-abcd-p-n3", member="n3", type="pause", mechanism="pause",
                                    status=FaultStatus.ACTIVE, **fault_fields))  # type: ignore[arg-type]
    rt.paused.add("n3")
    store = FileStateStore(tmp_path / "journal.json")
    store.save(state)
    report = asyncio.run(Engine.resume(store, rt, options(rt)))
    assert report is not None
    assert all(not a.active for a in rt.agents.values())
    assert not rt.paused
    assert report["verdict"] == "Inconclusive" and report["rollback_confirmed"] is True
    loaded = store.load()
    assert loaded is not None and loaded.phase == Phase.COMPLETED and not loaded.outstanding()
    assert asyncio.run(Engine.resume(store, rt, options(rt))) is None, "a finished journal has nothing to do"


def test_agents_are_dialled_at_their_own_addresses_which_the_journal_keeps() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])  # its agent_factory refuses a data address
    report, store = run(doc([{"name": "slow", "type": "delay", "target": {"mode": "all"}}]), rt)
    assert report["rollback_confirmed"] is True
    assert all(any(call == "inject" for call, _ in a.calls) for a in rt.agents.values())
    saved = store.load()
    assert saved.members == {m: rt.address(m) for m in rt.ids}
    assert saved.agents == {m: rt.agent_address(m) for m in rt.ids}


def test_a_resumed_run_rolls_back_through_the_journaled_agent_addresses(tmp_path: Path) -> None:
    from faultlab.operator.runtime.base import Member, TargetRef
    from faultlab.protos.agent.v1 import agent_pb2 as pb

    rt = FakeRuntime(["n1", "n2", "n3"])

    async def members_without_agent_addresses(target: TargetRef) -> list[Member]:
        return [Member(i, rt.address(i)) for i in rt.ids]  # what the runtime reports now is not used

    rt.members = members_without_agent_addresses  # type: ignore[method-assign]
    exp = ChaosExperiment.model_validate(doc([{"name": "slow", "type": "delay"}]))
    state = ExperimentState("unit", "abcd", exp.to_dict(), 5, phase=Phase.OBSERVING)
    state.members = {m: rt.address(m) for m in rt.ids}
    state.agents = {m: rt.agent_address(m) for m in rt.ids}
    state.faults.append(FaultRecord(id="fl-abcd-0-n2-1", member="n2", address=rt.address("n2"), type="delay",
                                    mechanism="agent", status=FaultStatus.ACTIVE, step=0, fault_index=0,
                                    fault_name="slow", ttl_seconds=30))
    rt.agents["n2"].active["fl-abcd-0-n2-1"] = pb.Fault(id="fl-abcd-0-n2-1")
    store = FileStateStore(tmp_path / "journal.json")
    store.save(state)
    report = asyncio.run(Engine.resume(store, rt, options(rt)))
    assert report is not None and report["rollback_confirmed"] is True
    assert not rt.agents["n2"].active and ("recover", "fl-abcd-0-n2-1") in rt.agents["n2"].calls


def test_file_store_is_atomic_and_round_trips(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "x" / "journal.json")
    assert store.load() is None
    state = ExperimentState("n", "r", {"a": 1}, 3)
    state.event("phase", "Pending")
    store.save(state)
    again = store.load()
    assert again is not None and again.to_dict() == state.to_dict()
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["journal.json"], "no temp file left behind"
    (tmp_path / "x" / "journal.json").write_text("{not json")
    with pytest.raises(ValueError, match="journal"):
        store.load()


def test_malformed_experiment_is_rejected_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
apiVersion: faultlab.dev/v1alpha1
kind: ChaosExperiment
metadata: {name: bad}
spec:
  target: {name: demo}
  faults:
    - name: f
      type: delay
      target: {mode: fixed}
""")
    result = CliRunner().invoke(cli, ["chaos", "run", "-f", str(bad), "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "spec.faults[0].target" in result.output and "value" in result.output
    typo = tmp_path / "typo.yaml"
    typo.write_text(bad.read_text().replace("target: {mode: fixed}", "targte: {mode: one}"))
    result = CliRunner().invoke(cli, ["chaos", "run", "-f", str(typo), "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 2 and "spec.faults[0].targte" in result.output


def test_bad_fault_params_are_rejected_before_injection() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    report, _ = run(doc([{"name": "c", "type": "clockSkew", "params": {"offsetMs": 0}}]), rt)
    assert report["verdict"] == "Failed" and "nothing injected" in report["message"]
    assert "spec.faults[0] (c).params" in report["message"]
    assert not any(a.calls for a in rt.agents.values())


def test_role_targets_are_resolved_again_after_the_steady_state_check(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    async def statuses(self: ClusterView) -> dict[str, MemberStatus | None]:
        calls["n"] += 1
        leader = "n1" if calls["n"] == 1 else "n2"  # an election between planning and injection
        return {m: MemberStatus(m, "leader" if m == leader else "follower", 1, leader) for m in sorted(self.members)}

    monkeypatch.setattr(ClusterView, "statuses", statuses)
    rt = FakeRuntime(["n1", "n2", "n3"])
    report, _ = run(doc([{"name": "slow", "type": "delay", "params": {"latencyMs": 5},
                          "target": {"role": "leader"}}]), rt)
    assert [f["member"] for f in report["faults"]] == ["n2"], "the fault goes to the leader at injection time"
    assert any(e["kind"] == "replan" for e in report["timeline"])
    assert report["plan"][0]["faults"][0]["targets"] == ["n2"]


def _rpc_error(code: Any, details: str) -> Any:
    import grpc

    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_a_fault_the_agent_refuses_makes_the_run_inconclusive_naming_fault_member_and_reason() -> None:
    import grpc

    rt = FakeRuntime(["n1", "n2", "n3"])
    calls: list[str] = []

    async def refuse(fault: Any, *, timeout: float | None = None) -> Any:
        calls.append(fault.id)
        raise _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "fault.clock_skew: a clock skew is already active")

    rt.agents["n2"].inject = refuse  # type: ignore[method-assign]
    report, _ = run(doc([{"name": "skew", "type": "clockSkew", "target": {"members": ["n2"]},
                          "durationSeconds": 0.6}]), rt)
    assert report["verdict"] == "Inconclusive", report["message"]
    assert "skew (clockSkew) on n2 never became active" in report["message"]
    assert "a clock skew is already active" in report["message"]
    assert len(calls) == 1, "a refusal is not retried every tick within the same window"
    assert report["rollback_confirmed"] is True


def test_a_kill_the_runtime_cannot_do_is_reported_not_waited_for_and_not_passed() -> None:
    from faultlab.operator.runtime.base import RuntimeError_

    rt = FakeRuntime(["n1", "n2", "n3"])

    async def kill(target: Any, member: Any) -> None:
        raise RuntimeError_(f"member {member.id} of c has no running process (restarting?)")

    rt.kill = kill  # type: ignore[method-assign]
    started = time.monotonic()
    report, _ = run(doc([{"name": "k", "type": "kill", "target": {"role": "leader"}}]), rt)
    assert time.monotonic() - started < 10, "nothing to wait for: the kill never happened"
    assert report["verdict"] == "Inconclusive"
    assert "k (kill) on n1 never became active: refused: member n1 of c has no running process" in report["message"]
    assert report["rollback_confirmed"] is True


def test_a_fault_whose_inject_outcome_stays_unknown_is_not_a_pass() -> None:
    import grpc

    rt = FakeRuntime(["n1", "n2", "n3"])

    async def unavailable(fault: Any, *, timeout: float | None = None) -> Any:
        raise _rpc_error(grpc.StatusCode.UNAVAILABLE, "connection reset")

    rt.agents["n1"].inject = unavailable  # type: ignore[method-assign]
    report, _ = run(doc([{"name": "slow", "type": "delay", "target": {"role": "leader"}}]), rt)
    assert report["verdict"] == "Inconclusive"
    assert "slow (delay) on n1 never became active: not confirmed active (inject failed: connection reset)" \
        in report["message"]


def test_an_inject_that_errored_but_took_effect_is_confirmed_by_the_agents_list() -> None:
    import grpc

    rt = FakeRuntime(["n1", "n2", "n3"])
    agent = rt.agents["n1"]
    original = agent.inject

    async def applied_then_lost_reply(fault: Any, *, timeout: float | None = None) -> Any:
        await original(fault, timeout=timeout)
        raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    agent.inject = applied_then_lost_reply  # type: ignore[method-assign]
    report, _ = run(doc([{"name": "slow", "type": "delay", "target": {"role": "leader"}}]), rt)
    assert report["verdict"] == "Passed", report["message"]
    assert any("in effect after all" in e["message"] for e in report["timeline"])
    assert not agent.active


def test_a_pause_the_runtime_cannot_do_is_not_a_pass() -> None:
    from faultlab.operator.runtime.base import RuntimeError_

    rt = FakeRuntime(["n1", "n2", "n3"])

    async def pause(target: Any, member: Any) -> None:
        raise RuntimeError_("pausing is not supported here")

    rt.pause = pause  # type: ignore[method-assign]
    report, _ = run(doc([{"name": "p", "type": "pause", "target": {"role": "follower"}}]), rt)
    assert report["verdict"] == "Inconclusive"
    assert "p (pause) on n" in report["message"] and "never became active" in report["message"]
    assert "pausing is not supported here" in report["message"]


def test_a_fault_whose_window_opens_after_the_run_is_not_a_pass() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    report, _ = run(doc([{"name": "late", "type": "delay", "startAfterSeconds": 5}]), rt)
    assert not any(a.calls for a in rt.agents.values())
    assert report["verdict"] == "Inconclusive"
    assert "late (delay) on" in report["message"] and "after durationSeconds" in report["message"]


def test_pause_on_kubernetes_is_rejected_at_validation_naming_the_field_and_the_fix() -> None:
    from faultlab.operator.runtime.kubernetes import KubernetesRuntime

    class NoApi:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the Kubernetes API was used ({name}) before the experiment was validated")

    exp = ChaosExperiment.model_validate(doc([{"name": "slow", "type": "delay"},
                                              {"name": "freeze", "type": "pause", "target": {"role": "follower"}}]))
    store = MemoryStateStore()
    report = asyncio.run(Engine(exp, KubernetesRuntime(NoApi()), store, EngineOptions(html=False)).run())  # type: ignore[arg-type]
    assert report["verdict"] == "Failed" and report["phase"] == "Failed"
    assert "spec.faults[1].type (freeze): pause is not supported on Kubernetes" in report["message"]
    assert "use a partition" in report["message"] and "nothing injected" in report["message"]
    assert not report["faults"]


def test_no_fault_ttl_exceeds_the_agents_maximum_even_with_a_large_margin() -> None:
    from faultlab.nodes.agent.faults import MAX_TTL_SECONDS

    rt = FakeRuntime(["n1", "n2", "n3"])
    report, _ = run(doc([{"name": "slow", "type": "delay"}]), rt, ttl_margin_s=2 * MAX_TTL_SECONDS)
    assert report["faults"] and all(f["ttl_s"] == MAX_TTL_SECONDS for f in report["faults"])
    assert report["verdict"] == "Passed"


def _rollout_doc(flag: Path, hold: float) -> dict[str, Any]:
    return doc([{"name": "slow", "type": "delay", "target": {"mode": "all"}, "durationSeconds": 1.5}],
               durationSeconds=1.5, blastRadius={"maxTargets": 3, "allowQuorumLoss": True},
               rollout={"steps": [{"maxTargets": 1, "holdSeconds": hold}, {"maxTargets": 3}]},
               steadyState={"probes": [{"name": "no-flag", "type": "command", "everySeconds": 0.05,
                                        "command": ["sh", "-c", f"test ! -e {flag}"]}]})


def _flag_on_first_inject(rt: FakeRuntime, flag: Path) -> None:
    for agent in rt.agents.values():
        original = agent.inject

        async def inject(fault: Any, *, timeout: float | None = None, _orig: Any = original) -> Any:
            flag.touch()
            return await _orig(fault, timeout=timeout)

        agent.inject = inject  # type: ignore[method-assign]


@pytest.mark.parametrize("hold", [0.0, 0.3])
def test_rollout_does_not_widen_without_a_good_steady_state_sample_in_the_step(tmp_path: Path, hold: float) -> None:
    flag = tmp_path / "breached"
    rt = FakeRuntime(["n1", "n2", "n3"])
    _flag_on_first_inject(rt, flag)  # steady state holds before injection and never again after it
    report, _ = run(_rollout_doc(flag, hold), rt, recovery_timeout_s=0.5)
    steps = [e["message"] for e in report["timeline"] if e["kind"] == "step"]
    assert len(steps) == 1 and steps[0].startswith("rollout step 0"), steps
    assert len({f["member"] for f in report["faults"]}) == 1, "only step 0's one member was faulted"


def test_rollout_widens_once_steady_state_held_in_the_step(tmp_path: Path) -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    report, _ = run(_rollout_doc(tmp_path / "never-created", 0.2), rt)
    steps = [e for e in report["timeline"] if e["kind"] == "step"]
    assert [e["data"].get("step") for e in steps] == [0, 1]
    widened = steps[1]["at"]
    first_inject = min(e["at"] for e in report["timeline"] if e["kind"] == "inject")
    assert widened - first_inject >= 0.2, "holdSeconds of holding before widening"
    assert {f["member"] for f in report["faults"]} == {"n1", "n2", "n3"}


def test_paused_from_the_start_injects_nothing_and_is_inconclusive() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    report, store = run(doc([{"name": "slow", "type": "delay"}], paused=True), rt)
    assert not any(a.calls for a in rt.agents.values())
    assert report["verdict"] == "Inconclusive"
    assert report["message"] == "paused for the whole run; nothing was injected"
    assert store.load().paused_seconds > 0.3, "the clock ran on while paused"
    rt = FakeRuntime(["n1", "n2", "n3"])
    report, _ = run(doc([{"name": "slow", "type": "delay"}]), rt, paused=lambda: True)
    assert report["verdict"] == "Inconclusive" and not any(a.calls for a in rt.agents.values())


def test_a_run_paused_for_part_of_its_window_says_so_in_its_verdict() -> None:
    rt = FakeRuntime(["n1", "n2", "n3"])
    polls = iter([True])  # paused at the first look (the start of injection), then unpaused

    report, _ = run(doc([{"name": "slow", "type": "delay", "durationSeconds": 1.5}], durationSeconds=1.5), rt,
                    paused=lambda: next(polls, False))
    assert report["verdict"] == "Passed"
    assert "paused for" in report["message"] and "fault windows were cut short" in report["message"]


def test_disk_fill_on_kubernetes_needs_a_pvc_backed_cluster() -> None:
    from faultlab.operator.runtime.base import TargetRef
    from faultlab.operator.runtime.kubernetes import KubernetesRuntime

    class OneCluster:
        def __init__(self, storage: str) -> None:
            self.storage = storage

        def get(self, url: str) -> dict[str, Any]:
            assert "raftclusters/c" in url, url
            return {"spec": {"storage": {"type": self.storage, "size": "1Gi"}}}

        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the Kubernetes API was used ({name}) before the experiment was validated")

    exp = ChaosExperiment.model_validate(doc([{"name": "full", "type": "diskFill"}]))
    report = asyncio.run(Engine(exp, KubernetesRuntime(OneCluster("emptyDir")), MemoryStateStore(),  # type: ignore[arg-type]
                                EngineOptions(html=False)).run())
    assert report["verdict"] == "Failed" and not report["faults"]
    assert ("spec.faults[0].type (full): diskFill ballast on Kubernetes needs the RaftCluster's "
            "spec.storage.type: pvc") in report["message"]
    assert "evicts a pod" in report["message"] and "enospc: true" in report["message"]
    target = TargetRef(kind="RaftCluster", name="c", namespace="default")
    pvc, empty = KubernetesRuntime(OneCluster("pvc")), KubernetesRuntime(OneCluster("emptyDir"))  # type: ignore[arg-type]
    assert asyncio.run(pvc.refuse_fault(target, "diskFill", {})) is None
    assert asyncio.run(empty.refuse_fault(target, "diskFill", {"enospc": True})) is None  # no ballast: safe
