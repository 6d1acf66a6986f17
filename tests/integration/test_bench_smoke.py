"""`make bench-raft` keeps working: its faultlab systems start, take load and report, briefly.

Not a measurement (the benchmark is `make bench-raft`); this runs each faultlab harness for a
fraction of a second so a change to the node, the client or the harness that breaks the
benchmark fails here first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "raft"))

import run as bench  # noqa: E402  (bench/raft/run.py)

pytestmark = pytest.mark.timeout(120)


def _check(result: dict[str, Any]) -> None:
    assert result["errors"] == 0, result
    assert result["writes"] > 0 and result["p50_ms"] > 0, result


def test_inprocess_clients_write_through_the_leader(tmp_path: Path) -> None:
    cluster = bench.InprocFaultlabCluster(uvloop=bench._has_uvloop())
    cluster.start(tmp_path)
    try:
        part = cluster.run_load(4, 0.5, 0.2, 100)
    finally:
        cluster.stop()
    _check(bench.summarize([part], 0.5))


def test_pipelined_generators_write_through_the_leader(tmp_path: Path) -> None:
    cluster = bench.FaultlabCluster(uvloop=bench._has_uvloop(), pipeline=True)
    cluster.start(tmp_path)
    try:
        result = bench.generator_load("faultlab", cluster.targets(), 4, 0.5, 0.2, 100, ("--pipeline",))
    finally:
        cluster.stop()
    _check(result)
