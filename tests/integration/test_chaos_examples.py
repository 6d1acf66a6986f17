"""Every example in examples/chaos runs green against a 3-node local cluster.

The default run shortens each example (3 s of faults, 1 s rollout holds) to keep the tier
fast; with ``FAULTLAB_CHAOS_FULL_EXAMPLES=1`` they also run exactly as written, as
``faultlab chaos run -f ...`` would (about 15 s each; defined only then, so nothing skips).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultlab.operator.api import ChaosExperiment, RaftCluster, load_one
from faultlab.operator.chaos.engine import Engine, EngineOptions
from faultlab.operator.chaos.journal import FileStateStore
from faultlab.operator.runtime.local import LocalRuntime

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "chaos").glob("*.yaml"))
REQUIRED = {"leader-partition", "minority-partition", "leader-kill", "follower-pause", "latency-loss", "clock-skew",
            "disk-full", "wal-corruption", "rolling-kill"}


def test_every_required_example_exists_and_is_documented() -> None:
    names = {p.stem for p in EXAMPLES}
    assert names >= REQUIRED, REQUIRED - names
    for p in EXAMPLES:
        text = p.read_text()
        assert text.startswith("#") and "faultlab chaos run -f" in text, f"{p.name} lacks its comment header"
        exp = load_one(p, ChaosExperiment)
        assert exp.spec.target.name == "demo", "examples target examples/raft-cluster.yaml (cluster demo)"
        assert 5 <= exp.spec.duration_seconds <= 20


@pytest.fixture(scope="module")
def demo_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = LocalRuntime(tmp_path_factory.mktemp("chaos-examples"))
    cluster = load_one(ROOT / "examples" / "raft-cluster.yaml", RaftCluster)
    asyncio.run(rt.up(cluster))
    yield rt
    asyncio.run(rt.down(cluster.name))


def shortened(exp: ChaosExperiment, seconds: float = 3.0) -> ChaosExperiment:
    doc = exp.to_dict()
    spec = doc["spec"]
    scale = seconds / spec["durationSeconds"]
    spec["durationSeconds"] = seconds
    for f in spec["faults"]:
        f["durationSeconds"] = f["durationSeconds"] * scale
        if f.get("startAfterSeconds"):
            f["startAfterSeconds"] = f["startAfterSeconds"] * scale
    if spec.get("rollout"):
        spec["durationSeconds"] = seconds * 2
        for f in spec["faults"]:
            f["durationSeconds"] = seconds * 2
        for step in spec["rollout"]["steps"]:
            step["holdSeconds"] = min(step.get("holdSeconds", 0), 1.0)
    return ChaosExperiment.model_validate(doc)


async def run_example(rt: LocalRuntime, exp: ChaosExperiment, out: Path) -> dict[str, object]:
    await rt.wait_for_leader("demo", 20)
    engine = Engine(exp, rt, FileStateStore(out / "journal.json"),
                    EngineOptions(out_dir=out, after_s=0.5, warmup_s=0.5, seed=1))
    return await engine.run()


def _assert_green(report: dict[str, object]) -> None:
    assert report["verdict"] == "Passed", (report["message"], report["timeline"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_example_runs_green(demo_cluster: LocalRuntime, tmp_path: Path, path: Path) -> None:
    report = await run_example(demo_cluster, shortened(load_one(path, ChaosExperiment)), tmp_path)
    _assert_green(report)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "history.jsonl").is_file()


async def test_wal_corruption_example_is_detected_on_restart_and_heals(demo_cluster: LocalRuntime,
                                                                      tmp_path: Path) -> None:
    """The example must exercise detection: n3 restarts on the flipped bytes and refuses them."""
    n3 = demo_cluster.load("demo").member("n3")
    log_file, wal_dir = Path(n3.log_file), Path(n3.data_dir) / "wal"
    log_before = len(log_file.read_text())
    exp = shortened(load_one(ROOT / "examples" / "chaos" / "wal-corruption.yaml", ChaosExperiment))
    report = await run_example(demo_cluster, exp, tmp_path)
    _assert_green(report)
    log = log_file.read_text()[log_before:]
    assert re.search(rf"refusing to start: WAL corruption in {re.escape(str(wal_dir))}/\d+\.wal at offset \d+",
                     log), log
    assert "restored 16 of 16 flipped byte(s)" in log
    assert log.index("refusing to start") < log.index("restored 16 of 16") < log.rindex("serving on")
    status = await demo_cluster.status("demo")
    assert status.ready_replicas == 3, status


if os.environ.get("FAULTLAB_CHAOS_FULL_EXAMPLES") == "1":

    @pytest.mark.slow
    @pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
    async def test_example_runs_green_as_written(demo_cluster: LocalRuntime, tmp_path: Path, path: Path) -> None:
        _assert_green(await run_example(demo_cluster, load_one(path, ChaosExperiment), tmp_path))
