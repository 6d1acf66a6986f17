"""Resource models: defaults, camelCase aliases, errors that name the field, the blast-radius rule, YAML loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from faultlab.operator.api import (
    DEFAULT_IMAGE,
    FAULT_TYPES,
    ChaosExperiment,
    ChaosExperimentStatus,
    RaftCluster,
    ResourceError,
    check_blast_radius,
    load_one,
    load_resources,
)
from faultlab.operator.api.common import Resource

ROOT = Path(__file__).resolve().parents[2]


def raft(spec: dict[str, Any] | None = None, name: str = "demo") -> RaftCluster:
    doc = {"apiVersion": "faultlab.dev/v1alpha1", "kind": "RaftCluster", "metadata": {"name": name},
           "spec": spec or {}}
    resource = Resource.parse(doc)
    assert isinstance(resource, RaftCluster)
    return resource


def experiment(**spec: Any) -> ChaosExperiment:
    body: dict[str, Any] = {"target": {"name": "demo"}, "faults": [{"name": "f1", "type": "delay"}]}
    body.update(spec)
    resource = Resource.parse({"kind": "ChaosExperiment", "metadata": {"name": "exp"}, "spec": body})
    assert isinstance(resource, ChaosExperiment)
    return resource


def error_of(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ResourceError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- RaftCluster

def test_raftcluster_defaults() -> None:
    c = raft()
    s = c.spec
    assert (s.replicas, s.image, s.snapshot_threshold, s.max_value_bytes) == (3, DEFAULT_IMAGE, 10_000, 1_048_576)
    assert (s.timings.tick_ms, s.timings.election_ticks, s.timings.heartbeat_ticks) == (20, 10, 1)
    assert s.storage.type == "emptyDir" and s.agent.enabled is True
    assert c.api_version == "faultlab.dev/v1alpha1" and c.metadata.namespace == "default"
    assert DEFAULT_IMAGE.startswith("ghcr.io/faultlab/faultlab:")
    assert c.member_ids() == ["n1", "n2", "n3"]


def test_camel_case_aliases_in_and_out() -> None:
    c = raft({"timings": {"tickMs": 5, "electionTicks": 20}, "maxValueBytes": 10,
              "storage": {"type": "pvc", "storageClassName": "fast"}})
    assert c.spec.timings.tick_ms == 5 and c.spec.max_value_bytes == 10
    assert c.spec.storage.storage_class_name == "fast"
    out = c.to_dict()
    assert out["spec"]["timings"]["electionTicks"] == 20 and out["spec"]["maxValueBytes"] == 10
    assert "max_value_bytes" not in out["spec"]
    # snake_case is accepted from Python (populate_by_name)
    assert RaftCluster(metadata={"name": "x"}, spec={"max_value_bytes": 7}).spec.max_value_bytes == 7  # type: ignore[arg-type]
    # a dump validates back to the same model
    assert Resource.parse(out) == c


def test_unknown_field_is_rejected_naming_it_with_a_suggestion() -> None:
    msg = error_of(raft, {"replcas": 3})
    assert "RaftCluster demo: spec.replcas: unknown field" in msg
    assert "did you mean 'replicas'" in msg
    msg = error_of(raft, {"timings": {"tickMS": 5}})
    assert "spec.timings.tickMS" in msg and "tickMs" in msg


@pytest.mark.parametrize(("spec", "expected"), [
    ({"replicas": 0}, "RaftCluster demo: spec.replicas: must be >= 1 (got 0)"),
    ({"replicas": 10}, "spec.replicas: must be <= 9 (got 10)"),
    ({"timings": {"tickMs": 0}}, "spec.timings.tickMs: must be >= 1"),
    ({"timings": {"heartbeatTicks": 10, "electionTicks": 10}}, "spec.timings: heartbeatTicks (10) must be less"),
    ({"storage": {"type": "disk"}}, "spec.storage.type: 'disk' is not valid"),
    ({"storage": {"storageClassName": "x"}}, "storageClassName applies only to type: pvc"),
    ({"storage": {"size": "lots"}}, "spec.storage.size: 'lots' is not a Kubernetes quantity"),
    ({"resources": {"limits": {"memory": "1 GB"}}}, "spec.resources.limits.memory: '1 GB' is not a Kubernetes"),
    ({"replicas": "three"}, "spec.replicas: "),
])
def test_bad_raftcluster_values_name_the_field(spec: dict[str, Any], expected: str) -> None:
    assert expected in error_of(raft, spec)


def test_even_replicas_warn() -> None:
    assert raft({"replicas": 3}).warnings() == []
    (warning,) = raft({"replicas": 4}).warnings()
    assert "spec.replicas" in warning and "odd" in warning


def test_bad_names_and_api_version() -> None:
    assert "metadata.name" in error_of(raft, None, name="Demo_1")
    msg = error_of(Resource.parse, {"apiVersion": "faultlab.dev/v1", "kind": "RaftCluster",
                                    "metadata": {"name": "a"}})
    assert "apiVersion: must be faultlab.dev/v1alpha1" in msg
    msg = error_of(Resource.parse, {"kind": "RaftClustr", "metadata": {"name": "a"}})
    assert "unknown kind 'RaftClustr'" in msg and "did you mean 'RaftCluster'" in msg


def test_server_metadata_is_accepted_and_dropped() -> None:
    c = Resource.parse({"kind": "RaftCluster", "metadata": {"name": "a", "uid": "u", "resourceVersion": "1",
                                                             "managedFields": [], "generation": 3}})
    assert c.metadata.generation == 3


# ---------------------------------------------------------------- ChaosExperiment

def test_experiment_defaults() -> None:
    e = experiment()
    s = e.spec
    assert s.target.kind == "RaftCluster" and s.target.namespace is None
    assert s.checks == ["linearizable", "noLostWrites"] and s.duration_seconds == 30 and not s.dry_run
    assert not s.paused and s.blast_radius.allow_quorum_loss is False and s.rollout is None
    w = s.workload
    assert (w.enabled, w.clients, w.keys, w.read_ratio, w.cas_ratio, w.value_bytes, w.rate_limit) == (
        True, 8, 16, 0.5, 0.1, 64, None)
    f = s.faults[0]
    assert (f.target.role, f.target.mode, f.start_after_seconds, f.duration_seconds) == ("any", "one", 0, 10)
    assert f.params == {"latencyMs": 100, "jitterMs": 0, "methods": [], "includeClients": False}
    assert f.effective_direction == "both" and f.effective_peers is None
    assert experiment(faults=[{"name": "p", "type": "partition"}]).spec.faults[0].effective_peers == "others"


def test_full_experiment_round_trips() -> None:
    e = experiment(
        steadyState={"probes": [
            {"name": "errors", "type": "workloadErrorRate", "tolerance": {"max": 0.01}},
            {"name": "p99", "type": "workloadLatency", "tolerance": {"maxMs": 250, "percentile": "p99"}},
            {"name": "web", "type": "http", "url": "http://127.0.0.1:1/healthz", "expectStatus": 204},
            {"name": "script", "type": "command", "command": ["true"], "timeoutSeconds": 2},
            {"name": "leader", "type": "leaderExists", "everySeconds": 0.5},
        ]},
        faults=[
            {"name": "slow-leader", "type": "delay", "params": {"latencyMs": 50, "jitterMs": 5},
             "target": {"role": "leader"}, "direction": "outbound", "durationSeconds": 5},
            {"name": "cut", "type": "partition", "target": {"members": ["n3"]}, "peers": "others",
             "startAfterSeconds": 6},
        ],
        blastRadius={"maxTargets": 1},
        rollout={"steps": [{"maxTargets": 1, "holdSeconds": 5}]},
        abortConditions=[{"probe": "errors", "threshold": 0.2, "forSeconds": 3},
                         {"probe": {"name": "inline", "type": "health"}}],
        workload={"clients": 4, "rateLimit": 100},
        checks=["linearizable", "converged"],
        schedule={"cron": "0 3 * * 1-5", "window": {"start": "02:00", "end": "05:30", "timezone": "Europe/Paris"}},
        durationSeconds=20, dryRun=True,
    )
    assert e.spec.abort_conditions[0].probe_name == "errors"
    assert e.spec.abort_conditions[1].probe_name == "inline"
    assert e.spec.steady_state.probes[1].tolerance is not None
    assert e.spec.steady_state.probes[1].tolerance.max_ms == 250
    assert e.spec.schedule is not None and e.spec.schedule.concurrency_policy == "Forbid"
    out = e.to_dict()
    assert out["spec"]["steadyState"]["probes"][0]["tolerance"]["max"] == 0.01
    assert out["spec"]["abortConditions"][0]["forSeconds"] == 3
    assert Resource.parse(out) == e
    assert check_blast_radius(e.spec, 3) == []


def test_unknown_fault_type_lists_the_valid_ones() -> None:
    msg = error_of(experiment, faults=[{"name": "f", "type": "latency"}])
    assert "spec.faults[0].type: 'latency' is not valid" in msg
    for t in FAULT_TYPES:
        assert repr(t) in msg


@pytest.mark.parametrize(("fault", "expected"), [
    ({"type": "delay", "params": {"latncyMs": 5}},
     "spec.faults[0].params: unknown parameter 'latncyMs' for fault type delay; valid: latencyMs, jitterMs"),
    ({"type": "loss", "params": {"probability": 1.5}}, "spec.faults[0].params.probability: must be <= 1"),
    ({"type": "error", "params": {"code": "NOPE"}}, "spec.faults[0].params.code: must be one of"),
    ({"type": "delay", "params": {"latencyMs": "fast"}}, "spec.faults[0].params.latencyMs: must be a number"),
    ({"type": "kill", "params": {"signal": 9}}, "unknown parameter 'signal' for fault type kill; valid: none"),
    ({"type": "kill", "direction": "inbound"}, "direction applies only to network faults"),
    ({"type": "crash", "peers": "selected"}, "peers applies only to network faults"),
    ({"type": "delay", "durationSeconds": 0}, "spec.faults[0].durationSeconds: must be > 0"),
    ({"type": "delay", "startAfterSeconds": -1}, "spec.faults[0].startAfterSeconds: must be >= 0"),
    ({"type": "delay", "target": {"mode": "percent", "value": 150}}, "spec.faults[0].target: mode percent needs"),
    ({"type": "delay", "target": {"mode": "fixed"}}, "mode fixed needs value"),
    ({"type": "delay", "target": {"mode": "one", "value": 2}}, "value applies only to mode fixed or percent"),
    ({"type": "delay", "target": {"role": "primary"}}, "spec.faults[0].target.role: 'primary' is not valid"),
    ({"type": "partition", "target": {"mode": "all"}}, "has no other side"),
    ({"type": "delay", "targett": {}}, "spec.faults[0].targett: unknown field (did you mean 'target'?)"),
])
def test_bad_faults_name_the_field(fault: dict[str, Any], expected: str) -> None:
    assert expected in error_of(experiment, faults=[{"name": "f", **fault}])


@pytest.mark.parametrize(("spec", "expected"), [
    ({"faults": []}, "spec.faults: must have at least 1"),
    ({"faults": [{"name": "a", "type": "delay"}, {"name": "a", "type": "loss"}]}, "faults[1].name: 'a' is used twice"),
    ({"steadyState": {"probes": [{"name": "e", "type": "workloadErrorRate"}]}}, "needs tolerance.max"),
    ({"steadyState": {"probes": [{"name": "e", "type": "workloadErrorRate", "tolerance": {"max": 5}}]}},
     "an error rate is 0..1"),
    ({"steadyState": {"probes": [{"name": "l", "type": "workloadLatency"}]}}, "needs tolerance.maxMs"),
    ({"steadyState": {"probes": [{"name": "h", "type": "http"}]}}, "type http needs url"),
    ({"steadyState": {"probes": [{"name": "h", "type": "health", "url": "http://x"}]}}, "url applies only"),
    ({"steadyState": {"probes": [{"name": "c", "type": "command"}]}}, "type command needs command"),
    ({"abortConditions": [{"probe": "missing"}]}, "spec.abortConditions[0].probe: no steadyState probe named"),
    ({"blastRadius": {"maxPercent": 120}}, "spec.blastRadius.maxPercent: must be <= 100"),
    ({"blastRadius": {"maxTargets": 0}}, "spec.blastRadius.maxTargets: must be >= 1"),
    ({"rollout": {"steps": [{"holdSeconds": 1}]}}, "exactly one of maxTargets or maxPercent"),
    ({"rollout": {"steps": [{"maxPercent": 0}]}}, "spec.rollout.steps[0].maxPercent: must be > 0"),
    ({"workload": {"readRatio": 0.8, "casRatio": 0.3}}, "readRatio + casRatio must be <= 1"),
    ({"workload": {"enabled": False}}, "need the workload's history"),
    ({"checks": ["linearizable", "serializable"]}, "spec.checks[1]: 'serializable' is not valid"),
    ({"schedule": {"cron": "every day"}}, "spec.schedule.cron: 'every day' is not a 5-field cron"),
    ({"schedule": {"cron": "* * * * *", "window": {"start": "25:00", "end": "01:00"}}},
     "spec.schedule.window.start: '25:00' is not HH:MM"),
    ({"schedule": {"cron": "* * * * *", "window": {"start": "01:00", "end": "02:00", "timezone": "Mars/Base"}}},
     "unknown time zone 'Mars/Base'"),
    ({"target": {"name": "demo", "kind": "Cluster"}}, "spec.target.kind: 'Cluster' is not valid"),
    ({"durationSeconds": -5}, "spec.durationSeconds: must be > 0"),
    ({"blastRadius": {"maxTargets": 1}, "faults": [{"name": "a", "type": "delay",
                                                    "target": {"mode": "fixed", "value": 2}}]},
     "targets 2 members but blastRadius.maxTargets is 1"),
    ({"dryrun": True}, "spec.dryrun: unknown field (did you mean 'dryRun'?)"),
])
def test_bad_experiments_name_the_field(spec: dict[str, Any], expected: str) -> None:
    msg = error_of(experiment, **spec)
    assert msg.startswith("ChaosExperiment exp: ")
    assert expected in msg


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(ResourceError) as info:
        raft({"replicas": 0, "snapshotThreshold": 0, "bogus": 1})
    assert len(info.value.problems) == 3
    assert "3 problems" in str(info.value)


# ---------------------------------------------------------------- blast radius vs quorum

def test_one_member_at_a_time_is_fine_on_three() -> None:
    e = experiment(faults=[{"name": "k", "type": "kill", "target": {"role": "leader"}}])
    assert check_blast_radius(e.spec, 3) == []


def test_two_of_three_needs_allow_quorum_loss() -> None:
    faults = [{"name": "k", "type": "kill", "target": {"mode": "fixed", "value": 2}}]
    problems = check_blast_radius(experiment(faults=faults).spec, 3)
    assert len(problems) == 1
    assert "take 2 of 3 members out of the quorum" in problems[0] and "allowQuorumLoss" in problems[0]
    assert check_blast_radius(experiment(faults=faults, blastRadius={"allowQuorumLoss": True}).spec, 3) == []
    assert check_blast_radius(experiment(faults=faults).spec, 5) == []


def test_overlapping_faults_add_up_and_staggered_do_not() -> None:
    together = [{"name": "a", "type": "pause", "durationSeconds": 10},
                {"name": "b", "type": "crash", "durationSeconds": 10}]
    assert check_blast_radius(experiment(faults=together).spec, 3)
    staggered = [{"name": "a", "type": "pause", "durationSeconds": 10},
                 {"name": "b", "type": "crash", "startAfterSeconds": 10, "durationSeconds": 10}]
    assert check_blast_radius(experiment(faults=staggered).spec, 3) == []


def test_overlapping_faults_on_the_same_named_member_count_once() -> None:
    same = [{"name": "a", "type": "corruption", "target": {"members": ["n3"]}, "durationSeconds": 8},
            {"name": "b", "type": "kill", "target": {"members": ["n3"]}, "startAfterSeconds": 1}]
    assert check_blast_radius(experiment(faults=same).spec, 3) == []
    different = [{"name": "a", "type": "corruption", "target": {"members": ["n2"]}, "durationSeconds": 8},
                 {"name": "b", "type": "kill", "target": {"members": ["n3"]}, "startAfterSeconds": 1}]
    assert check_blast_radius(experiment(faults=different).spec, 3)
    # A partition's minority side may be the members it did not name: never merged.
    cut = [{"name": "a", "type": "partition", "target": {"members": ["n3"]}, "durationSeconds": 8},
           {"name": "b", "type": "kill", "target": {"members": ["n3"]}}]
    assert check_blast_radius(experiment(faults=cut).spec, 3)
    unnamed = [{"name": "a", "type": "crash", "target": {"members": ["n3"]}},
               {"name": "b", "type": "kill"}]
    assert check_blast_radius(experiment(faults=unnamed).spec, 3)


def test_a_health_gated_rolling_kill_counts_only_the_members_each_step_adds() -> None:
    kill = [{"name": "kill", "type": "kill", "target": {"mode": "all"}}]
    steps = {"steps": [{"maxTargets": 1}, {"maxTargets": 2}, {"maxTargets": 3}]}
    health = {"probes": [{"name": "serving", "type": "health"}]}
    assert check_blast_radius(experiment(faults=kill, rollout=steps, steadyState=health).spec, 3) == []
    # Without the health gate a step may start while the last step's member is still down.
    ungated = check_blast_radius(experiment(faults=kill, rollout=steps).spec, 3)
    assert any("rollout.steps[1]" in p and "health" in p for p in ungated), ungated
    # Two new members in one step is two down at once.
    jump = {"steps": [{"maxTargets": 1}, {"maxTargets": 3}]}
    assert any("2 new members" in p for p in check_blast_radius(
        experiment(faults=kill, rollout=jump, steadyState=health).spec, 3))
    # A lasting fault (pause) keeps every member of the earlier steps out.
    pause = [{"name": "p", "type": "pause", "target": {"mode": "all"}}]
    assert check_blast_radius(experiment(faults=pause, rollout=steps, steadyState=health).spec, 3)


def test_degrading_faults_do_not_count_against_quorum() -> None:
    faults = [{"name": "slow", "type": "delay", "target": {"mode": "all"}}]
    assert check_blast_radius(experiment(faults=faults).spec, 3) == []


def test_percent_and_declared_radius() -> None:
    half = [{"name": "p", "type": "pause", "target": {"mode": "percent", "value": 50}}]
    assert check_blast_radius(experiment(faults=half).spec, 5)  # ceil(2.5) = 3 > 2 tolerated
    assert check_blast_radius(experiment(faults=half).spec, 4)  # 2 of 4 > 1
    forty = [{"name": "p", "type": "pause", "target": {"mode": "percent", "value": 40}}]
    assert check_blast_radius(experiment(faults=forty).spec, 5) == []  # 2 of 5 is tolerated
    problems = check_blast_radius(experiment(blastRadius={"maxTargets": 2}).spec, 3)
    assert any("blastRadius.maxTargets: 2 exceeds" in p for p in problems)
    over = [{"name": "d", "type": "delay", "target": {"mode": "all"}}]
    assert any("over the blast radius of 1" in p
               for p in check_blast_radius(experiment(faults=over, blastRadius={"maxTargets": 1}).spec, 3))


def test_unknown_members_and_too_many_targets() -> None:
    faults = [{"name": "x", "type": "delay", "target": {"members": ["n1", "n7"]}},
              {"name": "y", "type": "delay", "target": {"mode": "fixed", "value": 4}}]
    problems = check_blast_radius(experiment(faults=faults).spec, 3)
    assert any("no member n7" in p for p in problems)
    assert any("4 members asked, the target has 3" in p for p in problems)


def test_partition_counts_the_smaller_side() -> None:
    faults = [{"name": "split", "type": "partition", "target": {"mode": "fixed", "value": 2}}]
    assert check_blast_radius(experiment(faults=faults).spec, 3) == []  # {2} | {1}: majority stays
    assert check_blast_radius(experiment(faults=faults).spec, 4)  # {2} | {2}: no side has 3


# ---------------------------------------------------------------- YAML

MULTI = """
# leading comment
apiVersion: faultlab.dev/v1alpha1
kind: RaftCluster
metadata: {name: demo}
spec: {replicas: 5}
---
---
apiVersion: faultlab.dev/v1alpha1
kind: ChaosExperiment
metadata: {name: kill-leader, namespace: chaos}
spec:
  target: {name: demo}
  faults:
    - name: kill
      type: kill
      target: {role: leader}
"""


def test_multi_document_yaml_dispatches_by_kind(tmp_path: Path) -> None:
    resources = load_resources(MULTI)
    assert [type(r) for r in resources] == [RaftCluster, ChaosExperiment]
    path = tmp_path / "both.yaml"
    path.write_text(MULTI)
    assert load_resources(path) == resources
    assert load_resources(str(path)) == resources
    assert load_one(path, ChaosExperiment).metadata.namespace == "chaos"
    assert load_one(path, RaftCluster).spec.replicas == 5


def test_yaml_errors_name_the_document(tmp_path: Path) -> None:
    bad = MULTI.replace("replicas: 5", "replicas: 0")
    msg = error_of(load_resources, bad)
    assert "(document 1): RaftCluster demo: spec.replicas: must be >= 1 (got 0)" in msg
    assert "not valid YAML" in error_of(load_resources, "kind: [unclosed\n")
    assert "a resource must be a mapping" in error_of(load_resources, "- a\n- b\n")
    assert "cannot read" in error_of(load_resources, tmp_path / "missing.yaml")
    assert "no ChaosExperiment" in error_of(load_one, "kind: RaftCluster\nmetadata: {name: a}\n", ChaosExperiment)


def test_example_cluster_is_valid() -> None:
    cluster = load_one(ROOT / "examples" / "raft-cluster.yaml", RaftCluster)
    assert cluster.name == "demo" and cluster.spec.replicas == 3 and cluster.warnings() == []


def test_status_models_accept_controller_output() -> None:
    status = ChaosExperimentStatus.model_validate({
        "phase": "Completed", "verdict": "Passed", "availability": 0.99, "errorRate": 0.01, "mttrSeconds": 1.5,
        "latency": {"before": {"p50Ms": 1, "p99Ms": 5}, "during": {"p50Ms": 3}},
        "checks": [{"name": "linearizable", "result": "Passed", "operations": 1000}],
        "injectedFaults": [{"fault": "kill", "faultId": "exp-kill-n1", "type": "kill", "member": "n1",
                            "agentStartedAt": 1.7e9}],
        "timeline": [{"time": "2026-01-01T00:00:00Z", "type": "FaultInjected", "member": "n1"}],
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    })
    assert status.latency.during.p50_ms == 3 and status.injected_faults[0].agent_started_at == 1.7e9
    with pytest.raises(ValueError, match="phase"):
        ChaosExperimentStatus.model_validate({"phase": "Exploded"})


def test_windows_are_bounded_so_no_ttl_exceeds_what_the_agent_accepts() -> None:
    from faultlab.nodes.agent.faults import MAX_TTL_SECONDS
    from faultlab.operator.api.chaos import AGENT_MAX_TTL_SECONDS, FAULT_TTL_MARGIN_SECONDS, MAX_WINDOW_SECONDS
    from faultlab.operator.api.crd import crd

    assert AGENT_MAX_TTL_SECONDS == MAX_TTL_SECONDS, "the models' copy of the agent's TTL limit is stale"
    assert MAX_WINDOW_SECONDS + FAULT_TTL_MARGIN_SECONDS <= MAX_TTL_SECONDS
    assert experiment(durationSeconds=MAX_WINDOW_SECONDS).spec.duration_seconds == MAX_WINDOW_SECONDS
    msg = error_of(experiment, durationSeconds=86400)
    assert "spec.durationSeconds" in msg and f"at most {MAX_WINDOW_SECONDS}s" in msg and "spec.schedule" in msg
    msg = error_of(experiment, faults=[{"name": "f1", "type": "delay", "durationSeconds": 7200}])
    assert "spec.faults[0].durationSeconds" in msg and f"{MAX_TTL_SECONDS}s" in msg
    schema = crd("ChaosExperiment")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["properties"]["durationSeconds"]["maximum"] == MAX_WINDOW_SECONDS
    assert schema["properties"]["faults"]["items"]["properties"]["durationSeconds"]["maximum"] == MAX_WINDOW_SECONDS
