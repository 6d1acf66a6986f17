"""Verdicts are checked, not assumed: the demo passes on a healthy cluster, and a broken one is caught.

The broken cluster runs real nodes started with the test-only ``--unsafe-local-reads``
(a member that believes it leads answers reads from local state). Under a leader
partition the old leader keeps believing it leads for a while; its pinned reader then
reads values the new leader has already overwritten, and the linearizability check must
say so. A slow clock on the partitioned leader (a stalled VM, in real life) keeps it
believing it leads long enough that the workload reliably hits that window.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultlab.operator.api import ChaosExperiment, RaftCluster, load_one
from faultlab.operator.chaos.engine import Engine, EngineOptions
from faultlab.operator.chaos.journal import FileStateStore
from faultlab.operator.runtime.local import LocalRuntime, MemberRecord

pytestmark = pytest.mark.timeout(300)


def test_demo_on_a_healthy_cluster_is_linearizable_with_no_lost_writes() -> None:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "faultlab.operator.cli", "demo", "--json"],
                         capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)  # --json: stdout is the JSON document and nothing else
    names = [e["name"] for e in result["experiments"]]
    assert names == ["leader-partition", "leader-kill"]
    for e in result["experiments"]:
        assert e["verdict"] == "Passed", e
        assert e["checks"] == {"linearizable": "linearizable", "noLostWrites": "ok"}
        assert e["rollback_confirmed"] is True
        assert 0 < e["availability"]["overall"] <= 1 and e["mttr_s"] is not None
        assert e["latency"]["before"]["p50_ms"] is not None
        assert Path(e["html"]).is_file()
    assert elapsed < 120, f"the demo took {elapsed:.0f}s"


class UnsafeReadsRuntime(LocalRuntime):
    """The real local runtime, with every node started with --unsafe-local-reads."""

    def _spawn_supervisor(self, m: MemberRecord, node_cmd: list[str]) -> int:
        return super()._spawn_supervisor(m, [*node_cmd, "--unsafe-local-reads"])


BROKEN = """
apiVersion: faultlab.dev/v1alpha1
kind: RaftCluster
metadata: {name: broken}
spec: {replicas: 3}
"""

PARTITION = {
    "apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment", "metadata": {"name": "stale-reads"},
    "spec": {
        "target": {"name": "broken"},
        "steadyState": {"probes": [{"name": "leader", "type": "leaderExists", "everySeconds": 0.25}]},
        "faults": [
            {"name": "cut-leader", "type": "partition", "target": {"role": "leader"}, "durationSeconds": 5},
            {"name": "slow-clock", "type": "clockSkew", "params": {"offsetMs": 0, "driftPpm": -900000},
             "target": {"role": "leader"}, "durationSeconds": 5},
        ],
        "workload": {"clients": 4, "keys": 8, "rateLimit": 150},
        "checks": ["linearizable", "noLostWrites"],
        "durationSeconds": 5,
    },
}


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[LocalRuntime]:
    rt = UnsafeReadsRuntime(tmp_path / "state")
    cluster = load_one(BROKEN, RaftCluster)
    asyncio.run(rt.up(cluster))
    yield rt
    asyncio.run(rt.down(cluster.name))


async def test_unsafe_local_reads_are_caught_as_not_linearizable(broken: LocalRuntime, tmp_path: Path) -> None:
    exp = ChaosExperiment.model_validate(PARTITION)
    report = await Engine(exp, broken, FileStateStore(tmp_path / "journal.json"),
                          EngineOptions(out_dir=tmp_path, seed=11)).run()
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["linearizable"]["verdict"] == "not_linearizable", checks["linearizable"]["message"]
    assert report["verdict"] == "Failed"
    assert "reads" in checks["linearizable"]["message"], "the explanation names the stale read"
    assert report["rollback_confirmed"] is True
