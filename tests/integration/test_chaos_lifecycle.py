"""The engine's promises on a real cluster: abort within 2 s, dry run, and rollback after the engine is SIGKILLed.

The engine runs as `faultlab chaos run` in a subprocess for the kill tests, so the
process that injected the faults really dies; what is checked afterwards is the agents'
own List (a fault's TTL heals it) and the journal a resumed engine finishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultlab.nodes.agent.client import AgentClient
from faultlab.operator.api import ChaosExperiment, RaftCluster, load_one
from faultlab.operator.chaos.engine import Engine, EngineOptions
from faultlab.operator.chaos.journal import FaultStatus, FileStateStore, Phase
from faultlab.operator.runtime.base import TargetRef
from faultlab.operator.runtime.local import LocalRuntime

pytestmark = pytest.mark.timeout(300)

CLUSTER = """
apiVersion: faultlab.dev/v1alpha1
kind: RaftCluster
metadata: {name: life}
spec: {replicas: 3}
"""
TARGET = TargetRef("RaftCluster", "life")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRuntime, Path]]:
    state = tmp_path_factory.mktemp("chaos-life")
    rt = LocalRuntime(state)
    c = load_one(CLUSTER, RaftCluster)
    asyncio.run(rt.up(c))
    yield rt, state
    asyncio.run(rt.down(c.name))


def exp_doc(name: str, faults: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment", "metadata": {"name": name},
            "spec": {"target": {"name": "life"}, "faults": faults, "workload": {"enabled": False}, "checks": [],
                     **spec}}


async def all_faults(rt: LocalRuntime) -> dict[str, list[Any]]:
    token = await rt.agent_token(TARGET)
    out: dict[str, list[Any]] = {}
    for m in await rt.members(TARGET):
        async with AgentClient(m.agent_address, token) as agent:
            out[m.id] = list((await agent.list()).faults)
    return out


async def wait_leader(rt: LocalRuntime) -> None:
    await rt.wait_for_leader("life", 20)


async def test_abort_condition_stops_injection_within_two_seconds(cluster: tuple[LocalRuntime, Path],
                                                                  tmp_path: Path) -> None:
    rt, _ = cluster
    await wait_leader(rt)
    # Cluster.Status calls slowed past the probe's deadline: "a leader exists" fails at its next sample.
    slow_status = {"latencyMs": 1500, "includeClients": True, "methods": ["/faultlab.raft.v1.Cluster/"]}
    exp = ChaosExperiment.model_validate(exp_doc(
        "abort", [{"name": "blind", "type": "delay", "params": slow_status, "direction": "inbound",
                   "target": {"mode": "all"}, "durationSeconds": 30}],
        durationSeconds=30,
        steadyState={"probes": [{"name": "leader", "type": "leaderExists", "everySeconds": 0.1}]},
        abortConditions=[{"probe": "leader"}]))
    store = FileStateStore(tmp_path / "journal.json")
    started = time.monotonic()
    report = await Engine(exp, rt, store, EngineOptions(out_dir=tmp_path, warmup_s=0, after_s=0, seed=3)).run()
    assert time.monotonic() - started < 20, "aborted long before the 30 s it was meant to run"
    assert report["verdict"] == "Aborted"
    journal = store.load()
    assert journal is not None
    abort = next(e for e in journal.timeline if e.kind == "abort")
    breach_at = abort.data["breach_at"]
    recovered = [f.recovered_at for f in journal.faults if f.recovered_at]
    assert len(recovered) == len(journal.faults) == 3
    assert max(recovered) - breach_at <= 2.0, f"rolled back {max(recovered) - breach_at:.2f}s after the breach"
    assert not any((await all_faults(rt)).values())


async def test_dry_run_injects_nothing_and_lists_targets(cluster: tuple[LocalRuntime, Path], tmp_path: Path) -> None:
    rt, _ = cluster
    await wait_leader(rt)
    exp = ChaosExperiment.model_validate(exp_doc(
        "dry", [{"name": "slow", "type": "delay", "target": {"role": "follower", "mode": "all"}},
                {"name": "kill", "type": "kill", "target": {"role": "leader"}}], dryRun=True))
    report = await Engine(exp, rt, FileStateStore(tmp_path / "j.json"), EngineOptions(out_dir=tmp_path)).run()
    assert report["phase"] == "DryRun" and report["verdict"] is None
    plan = {f["name"]: f["targets"] for f in report["plan"][0]["faults"]}
    leader = rt.leader_of(await rt.inspect("life"))
    assert plan["kill"] == [leader] and len(plan["slow"]) == 2 and leader not in plan["slow"]
    assert not report["faults"] and not any((await all_faults(rt)).values())


def start_engine(file: Path, state: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "faultlab.operator.cli", "chaos", "run", "-f", str(file),
                             "--state-dir", str(state), "--ttl-margin", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_injected(journal: Path, proc: subprocess.Popen[bytes], count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = FileStateStore(journal).load() if journal.exists() else None
        if state is not None and sum(f.status == FaultStatus.ACTIVE for f in state.faults) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"engine exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("the engine did not inject in time")


def write_exp(tmp: Path, name: str) -> Path:
    doc = exp_doc(name, [{"name": "cut", "type": "partition", "target": {"role": "leader"}, "durationSeconds": 4}],
                  durationSeconds=60)
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(doc))
    return path


async def test_sigkilled_engine_leaves_nothing_after_the_ttl_and_recover_finishes(
        cluster: tuple[LocalRuntime, Path]) -> None:
    rt, state = cluster
    await wait_leader(rt)
    file = write_exp(state, "killed")
    journal = state / "experiments" / "killed" / "journal.json"
    proc = start_engine(file, state)
    wait_injected(journal, proc, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    held = await all_faults(rt)
    assert sum(len(v) for v in held.values()) == 3, "the dead engine's faults are still in force"
    expires = max(a.expires_at for v in held.values() for a in v)
    assert expires - time.time() <= 8, "TTL = remaining duration + margin"
    deadline = expires + 5
    while any((await all_faults(rt)).values()):
        assert time.time() < deadline, "faults outlived their TTL"
        await asyncio.sleep(0.1)
    assert time.time() >= expires - 1.5, "healed by the TTL, not by anyone else"

    out = subprocess.run([sys.executable, "-m", "faultlab.operator.cli", "chaos", "recover", "killed",
                          "--state-dir", str(state), "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == "Inconclusive" and report["rollback_confirmed"] is True
    done = FileStateStore(journal).load()
    assert done is not None and done.phase == Phase.COMPLETED and not done.outstanding()


async def test_rerun_after_sigkill_rolls_back_before_the_ttl(cluster: tuple[LocalRuntime, Path]) -> None:
    rt, state = cluster
    await wait_leader(rt)
    file = write_exp(state, "rerun")
    journal = state / "experiments" / "rerun" / "journal.json"
    proc = start_engine(file, state)
    wait_injected(journal, proc, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    held = await all_faults(rt)
    expires = min(a.expires_at for v in held.values() for a in v)
    # Re-running the experiment first finishes the interrupted run's rollback (here with --dry-run
    # so the new run injects nothing).
    out = subprocess.run([sys.executable, "-m", "faultlab.operator.cli", "chaos", "run", "-f", str(file),
                          "--state-dir", str(state), "--dry-run", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "interrupted" in out.stderr
    assert not any((await all_faults(rt)).values())
    assert time.time() < expires, "rolled back by the resumed engine before the TTL would have"
    assert json.loads(out.stdout)["phase"] == "DryRun"
