"""bench/raft/plot.py: the SVG of a benchmark report (medians over rounds, one bar per system and client count)."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _plot() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_plot", ROOT / "bench" / "raft" / "plot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _round(scale: float) -> dict[str, object]:
    def runs(base: float) -> dict[str, object]:
        return {"runs": {c: {"throughput": base * int(c) * scale, "p50_ms": 2.0 * scale} for c in ("1", "64")}}
    return {"faultlab-pipeline": runs(400), "etcd": runs(700)}


def test_medians_take_the_middle_round_per_system_and_client_count() -> None:
    m = _plot().medians({"rounds": [_round(1.0), _round(3.0), _round(2.0)]})
    assert m["etcd"]["64"] == (700 * 64 * 2.0, 4.0)
    assert m["faultlab-pipeline"]["1"] == (800.0, 4.0)


def test_the_svg_has_a_labelled_bar_per_system_and_client_count() -> None:
    doc = _plot().svg({"cpus": 2, "rounds": [_round(1.0)]})
    root = ET.fromstring(doc)
    ns = "{http://www.w3.org/2000/svg}"
    tips = [t.text or "" for t in root.iter(f"{ns}title")]
    assert sorted(tips) == sorted([
        "faultlab-pipeline: 400 writes/s, p50 2.0 ms", "faultlab-pipeline: 25,600 writes/s, p50 2.0 ms",
        "etcd: 700 writes/s, p50 2.0 ms", "etcd: 44,800 writes/s, p50 2.0 ms"])
    heights = {}
    for rect in root.iter(f"{ns}rect"):
        tip = rect.find(f"{ns}title")
        if tip is not None:
            heights[tip.text or ""] = float(rect.get("height", 0))
    assert heights["etcd: 44,800 writes/s, p50 2.0 ms"] > heights["etcd: 700 writes/s, p50 2.0 ms"] > 0
