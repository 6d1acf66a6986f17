"""Report building: availability, latency periods, time to detect, MTTR, and the self-contained HTML."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console

from faultlab.operator.chaos.engine import RunData
from faultlab.operator.chaos.journal import ExperimentState, FaultRecord, FaultStatus, Phase
from faultlab.operator.chaos.report import build_report, compute_mttr, render_html, render_terminal
from faultlab.operator.chaos.workload import Sample, Workload, WorkloadConfig


def test_mttr_is_zero_when_steady_state_never_broke() -> None:
    series = [(t / 4, True) for t in range(40)]
    ttd, mttr, note = compute_mttr(series, fault_start=2.0)
    assert ttd is None and mttr == 0.0 and "never broke" in note


def test_mttr_counts_from_fault_start_to_the_first_stable_recovery() -> None:
    # fault at 2.0; breach 2.5..3.0; a 0.5 s blip of ok at 3.25; breach again; ok for good from 4.5
    ok = {t / 4: True for t in range(60)}
    for t in (2.5, 2.75, 3.0, 3.75, 4.0, 4.25):
        ok[t] = False
    series = sorted(ok.items())
    ttd, mttr, _ = compute_mttr(series, fault_start=2.0)
    assert ttd == 0.5
    assert mttr == 2.5, "the short recovery at 3.25 does not hold for 1 s and does not count"


def test_mttr_unknown_when_never_regained() -> None:
    series = [(t / 4, t < 8) for t in range(20)]
    ttd, mttr, note = compute_mttr(series, fault_start=1.0)
    assert ttd == 1.0 and mttr is None and "not regained" in note


def _report() -> dict[str, object]:
    state = ExperimentState("exp", "r1", {"spec": {"target": {"name": "demo"}}}, 42, phase=Phase.COMPLETED)
    state.started_at = 100.0
    state.finished_at = 120.0
    state.verdict, state.message, state.rollback_confirmed = "Passed", "ok", True
    state.faults.append(FaultRecord(id="f1", member="n1", address="", type="partition", mechanism="agent", step=0,
                                    fault_index=0, fault_name="cut", ttl_seconds=20, status=FaultStatus.RECOVERED,
                                    injected_at=105.0, recovered_at=110.0))
    state.event("leader", "leader n1 -> n2", at=106.0, leader="n2")
    wl = Workload({"n1": "127.0.0.1:1"}, WorkloadConfig())
    wl.started_at = 100.0
    for i in range(200):
        t = 100.0 + i * 0.1
        failed = 105.0 <= t < 106.0
        wl.samples.append(Sample(t, t + (0.05 if 105 <= t < 110 else 0.01), not failed, "put", "c0"))
    data = RunData(steady=[(100 + i * 0.25, not (105.0 <= 100 + i * 0.25 < 106.5), []) for i in range(80)],
                   workload=wl, checks=[{"name": "linearizable", "result": "Passed", "message": "fine"}])
    return build_report(state, data)


def test_report_metrics() -> None:
    rep = _report()
    m = rep["metrics"]
    assert isinstance(m, dict)
    assert m["availability"]["overall"] == 0.95
    assert abs(m["availability"]["during_faults"] - 0.8) < 0.01
    assert m["latency"]["before"]["p50_ms"] == 10.0 and m["latency"]["during"]["p99_ms"] == 50.0
    assert m["time_to_detect_s"] == 0.0 and m["mttr_s"] == 1.5
    assert rep["leader_changes"][0]["leader"] == "n2"  # type: ignore[index]
    json.dumps(rep)


def test_html_is_self_contained_with_a_timeline_plot() -> None:
    page = render_html(_report())
    assert "<svg" in page and "</svg>" in page
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["']https?://""", page), "no external assets"
    assert 'fill="#f4a261"' in page, "fault windows are shaded"
    assert 'stroke-dasharray="3 3"' in page, "leader changes are marked"


def test_terminal_rendering() -> None:
    buf = io.StringIO()
    render_terminal(_report(), Console(file=buf, width=120))
    text = buf.getvalue()
    assert "Passed" in text and "MTTR" in text and "linearizable" in text


def test_report_maps_onto_the_resource_status() -> None:
    from faultlab.operator.chaos.report import to_status

    status = to_status(_report())
    assert status.verdict == "Passed" and status.phase == "Completed"
    assert status.mttr_seconds == 1.5 and status.latency.before.p50_ms == 10.0
    assert status.injected_faults[0].member == "n1" and status.checks[0].result == "Passed"


def test_plot_axes_scale_to_the_data() -> None:
    from faultlab.operator.chaos.plot import _nice_max

    assert [_nice_max(v) for v in (0.3, 80, 110, 999, 1001, 4200)] == [0.5, 100, 200, 1000, 2000, 5000]


def test_status_docs_match_what_the_engine_records() -> None:
    """status.timeline[].type lists the kinds the engine really emits; mttrSeconds says what compute_mttr does."""
    from pathlib import Path

    from faultlab.operator.api.chaos import ChaosExperimentStatus, TimelineEvent
    from faultlab.operator.chaos import engine

    described = TimelineEvent.model_fields["type"].description or ""
    listed = set(re.findall(r"[a-z]+", re.sub(r"\([^)]*\)", "", described.split(":", 1)[1])))
    emitted = set(re.findall(r'_event\("([a-z]+)"', Path(engine.__file__).read_text()))
    assert emitted and emitted == listed, f"undocumented: {emitted - listed}, never emitted: {listed - emitted}"
    mttr = ChaosExperimentStatus.model_fields["mttr_seconds"].description or ""
    assert "injection" in mttr and "recovery to" not in mttr
    ttd, value, _ = compute_mttr([(1.0, True), (2.0, False), (3.0, True), (4.5, True)], fault_start=1.0)
    assert (ttd, value) == (1.0, 2.0), "MTTR counts from injection, not from the fault's recovery"
