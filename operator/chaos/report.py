"""Experiment reports: one JSON-able dict, rendered for the terminal (rich) and as HTML.

:func:`build_report` turns the journal state and what the engine observed into the
report: verdict, availability (overall and during the fault window), error rate,
latency p50/p99 before/during/after, time to detect, MTTR, check verdicts, the
timeline and a bucketed time series for the plot. :func:`save` writes
``report.json``, ``history.jsonl`` and ``report.html`` into the experiment's directory.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faultlab.operator.chaos.journal import ExperimentState, FaultStatus
from faultlab.operator.chaos.plot import timeline_svg
from faultlab.operator.chaos.probes import percentile

if TYPE_CHECKING:
    from rich.console import Console

    from faultlab.operator.chaos.engine import RunData
    from faultlab.operator.chaos.history import History
    from faultlab.operator.chaos.workload import Sample

__all__ = ["build_report", "compute_mttr", "load_report", "render_html", "render_terminal", "save", "to_status"]

SETTLE_S = 1.0


def _lat(samples: list[Sample]) -> dict[str, float | None]:
    lat = [s.latency_ms for s in samples if s.ok]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    return {"p50_ms": None if p50 is None else round(p50, 2), "p99_ms": None if p99 is None else round(p99, 2),
            "ops": len(samples)}


def _avail(samples: list[Sample]) -> float | None:
    return None if not samples else round(sum(1 for s in samples if s.ok) / len(samples), 4)


def compute_mttr(steady: list[tuple[float, bool]], fault_start: float | None,
                 settle_s: float = SETTLE_S) -> tuple[float | None, float | None, str]:
    """(time to detect, MTTR, note) from the steady-state series [(t, ok)].

    Detect: fault start -> first breach. MTTR: fault start -> first moment after the first
    breach from which steady state holds for ``settle_s``. Never broke: MTTR 0.
    """
    if fault_start is None:
        return None, None, "no fault was injected"
    after = [(t, ok) for t, ok in steady if t >= fault_start]
    first_breach = next((t for t, ok in after if not ok), None)
    if first_breach is None:
        return None, 0.0, "steady state never broke (MTTR 0)"
    since: float | None = None
    for t, ok in after:
        if t < first_breach:
            continue
        if ok:
            since = t if since is None else since
            if t - since >= settle_s:
                return first_breach - fault_start, since - fault_start, (
                    f"steady state broke {first_breach - fault_start:.2f}s after the fault started and held again "
                    f"from {since - fault_start:.2f}s")
        else:
            since = None
    return first_breach - fault_start, None, "steady state was not regained while observed"


def _series(samples: list[Sample], t0: float, t1: float) -> dict[str, Any]:
    span = max(t1 - t0, 0.001)
    bucket = 0.25 if span <= 60 else 1.0
    n = math.ceil(span / bucket)
    oks = [0] * n
    errs = [0] * n
    lats: list[list[float]] = [[] for _ in range(n)]
    for s in samples:
        i = int((s.ret - t0) / bucket)
        if 0 <= i < n:
            if s.ok:
                oks[i] += 1
                lats[i].append(s.latency_ms)
            else:
                errs[i] += 1
    rows = []
    for i in range(n):
        p50, p99 = percentile(lats[i], 50), percentile(lats[i], 99)
        rows.append([round(t0 + i * bucket, 3), oks[i], errs[i],
                     None if p50 is None else round(p50, 2), None if p99 is None else round(p99, 2)])
    return {"bucket_s": bucket, "t0": t0, "buckets": rows}


def build_report(state: ExperimentState, data: RunData) -> dict[str, Any]:
    wl = data.workload
    samples = list(wl.samples) if wl else []
    primary = [f for f in state.faults if f.primary and f.injected_at is not None]
    fault_start = min((f.injected_at for f in primary if f.injected_at), default=None)
    ends = [f.recovered_at or state.finished_at or time.time() for f in primary]
    fault_end = max(ends, default=None)
    metrics: dict[str, Any] = {"ops": {"total": len(samples), "ok": sum(1 for s in samples if s.ok)}}
    metrics["ops"]["failed"] = metrics["ops"]["total"] - metrics["ops"]["ok"]
    before = [s for s in samples if fault_start is None or s.call < fault_start]
    during = [s for s in samples if fault_start is not None and fault_end is not None
              and fault_start <= s.call <= fault_end]
    after = [s for s in samples if fault_end is not None and s.call > fault_end]
    overall = _avail(samples)
    in_window = _avail(during)
    metrics["availability"] = {"overall": overall, "during_faults": in_window}
    metrics["error_rate"] = {"overall": None if overall is None else round(1 - overall, 4),
                             "during_faults": None if in_window is None else round(1 - in_window, 4)}
    metrics["latency"] = {"before": _lat(before), "during": _lat(during), "after": _lat(after)}
    steady = [(t, ok) for t, ok, _ in data.steady]
    ttd, mttr, note = compute_mttr(steady, fault_start)
    metrics["time_to_detect_s"] = None if ttd is None else round(ttd, 3)
    metrics["mttr_s"] = None if mttr is None else round(mttr, 3)
    metrics["mttr_note"] = note
    metrics["fault_window"] = [fault_start, fault_end]
    if wl:
        metrics["pinned_reads"] = {"total": len(wl.pinned_samples),
                                   "ok": sum(1 for s in wl.pinned_samples if s.ok)}
        metrics["errors_by_code"] = dict(sorted(wl.errors.items()))

    windows = []
    for f in primary:
        windows.append({"label": f"{f.fault_name} ({f.type}) on {f.member}", "name": f.fault_name,
                        "member": f.member, "type": f.type, "start": f.injected_at,
                        "end": f.recovered_at or fault_end})
    leader_changes = [{"at": e.at, "leader": e.data.get("leader"), "message": e.message}
                      for e in state.timeline if e.kind == "leader"]
    t_start = (wl.started_at if wl and wl.started_at else state.started_at)
    t_end = max([s.ret for s in samples] + [fault_end or 0.0, t_start + 0.001])
    checks = list(data.checks)
    return {
        "kind": "ChaosExperimentReport",
        "name": state.name,
        "run_id": state.run_id,
        "seed": state.seed,
        "target": state.spec.get("spec", {}).get("target", {}),
        "phase": state.phase.value,
        "verdict": state.verdict,
        "message": state.message,
        "dry_run": state.phase.value == "DryRun",
        "interrupted": state.interrupted,
        "aborted": state.aborted or None,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "duration_s": round((state.finished_at or time.time()) - state.started_at, 3),
        "plan": state.plan,
        "rollback_confirmed": state.rollback_confirmed,
        "steady_state_after": data.steady_after,
        "faults": [
            {"id": f.id, "name": f.fault_name, "type": f.type, "member": f.member, "primary": f.primary,
             "peers": f.peers, "mechanism": f.mechanism, "ttl_s": f.ttl_seconds, "status": f.status.value,
             "agent_started_at": f.agent_started_at, "injected_at": f.injected_at, "recovered_at": f.recovered_at,
             "detail": f.detail}
            for f in state.faults
        ],
        "metrics": metrics,
        "checks": checks,
        "timeline": [{"at": e.at, "t": round(e.at - state.started_at, 3), "kind": e.kind, "message": e.message,
                      **({"data": e.data} if e.data else {})} for e in state.timeline],
        "windows": windows,
        "leader_changes": leader_changes,
        "series": _series(samples, t_start, t_end) if samples else {"bucket_s": 1.0, "t0": t_start, "buckets": []},
        "active_faults_left": [f.id for f in state.faults
                               if f.status not in (FaultStatus.RECOVERED, FaultStatus.FAILED)],
    }


def save(report: dict[str, Any], out_dir: Path, *, history: History | None = None, html: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if history is not None:
        history.to_jsonl(out_dir / "history.jsonl")
        report["history_path"] = str(out_dir / "history.jsonl")
    if html:
        report["html_path"] = str(out_dir / "report.html")
        (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")
    report["report_path"] = str(out_dir / "report.json")
    tmp = out_dir / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    tmp.replace(out_dir / "report.json")


def load_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} ms"


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} s"


_VERDICT_STYLE = {"Passed": "bold green", "Failed": "bold red", "Aborted": "bold yellow",
                  "Inconclusive": "bold magenta", None: "bold cyan"}


def render_terminal(report: dict[str, Any], console: Console) -> None:
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    verdict = report.get("verdict")
    style = _VERDICT_STYLE.get(verdict, "bold")
    rb = report.get("rollback_confirmed")
    rollback = "confirmed" if rb else "NOT confirmed" if rb is False else "n/a"
    head = (f"[{style}]{verdict or 'DRY RUN'}[/] — {escape(str(report.get('message', '')))}\n"
            f"run {report.get('run_id')} · seed {report.get('seed')} · {report.get('duration_s', 0):.1f}s · "
            f"rollback {rollback}")
    console.print(Panel(head, title=f"chaos experiment {report.get('name')}", expand=False))
    if report.get("dry_run") or (report.get("plan") and not report.get("faults")):
        plan = Table(title="planned targets", show_header=True)
        plan.add_column("step")
        plan.add_column("fault")
        plan.add_column("type")
        plan.add_column("targets")
        for step in report.get("plan", []):
            for f in step.get("faults", []):
                plan.add_row(str(step["step"]), f["name"], f["type"], ", ".join(f["targets"]) or "—")
        console.print(plan)
    m = report.get("metrics", {})
    if m.get("ops", {}).get("total"):
        t = Table(show_header=True, title="workload")
        t.add_column("")
        t.add_column("before")
        t.add_column("during faults")
        t.add_column("after")
        lat = m.get("latency", {})
        t.add_row("p50", *(_ms(lat.get(k, {}).get("p50_ms")) for k in ("before", "during", "after")))
        t.add_row("p99", *(_ms(lat.get(k, {}).get("p99_ms")) for k in ("before", "during", "after")))
        t.add_row("ops", *(str(lat.get(k, {}).get("ops", 0)) for k in ("before", "during", "after")))
        console.print(t)
        console.print(
            f"availability {_pct(m['availability']['overall'])} overall, {_pct(m['availability']['during_faults'])} "
            f"during faults · error rate {_pct(m['error_rate']['overall'])} · time to detect "
            f"{_s(m.get('time_to_detect_s'))} · MTTR {_s(m.get('mttr_s'))} ({m.get('mttr_note', '')})")
    if report.get("checks"):
        c = Table(show_header=True, title="checks")
        c.add_column("check")
        c.add_column("result")
        c.add_column("detail", overflow="fold")
        for chk in report["checks"]:
            color = {"Passed": "green", "Failed": "red"}.get(chk["result"], "magenta")
            c.add_row(chk["name"], f"[{color}]{chk['result']}[/]", escape(str(chk.get("message", "")).split("\n")[0]))
        console.print(c)
        for chk in report["checks"]:
            if chk["result"] == "Failed" and "\n" in str(chk.get("message", "")):
                console.print(f"[red]{chk['name']}[/]:\n{escape(chk['message'])}")
    tl = Table(show_header=True, title="timeline", show_lines=False)
    tl.add_column("t", justify="right")
    tl.add_column("event")
    tl.add_column("what", overflow="fold")
    for e in report.get("timeline", []):
        if e["kind"] in ("plan",) and not report.get("dry_run"):
            continue
        tl.add_row(f"{e['t']:.2f}s", e["kind"], escape(e["message"]))
    console.print(tl)
    for key in ("html_path", "report_path", "history_path"):
        if report.get(key):
            console.print(f"{key.replace('_path', '')}: {report[key]}")


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    m = report.get("metrics", {})
    lat = m.get("latency", {})
    verdict = report.get("verdict") or "DRY RUN"
    color = {"Passed": "#2e7d32", "Failed": "#c62828", "Aborted": "#ef6c00", "Inconclusive": "#6a1b9a"}.get(
        verdict, "#1565c0")
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{_ms(lat.get(k, {}).get('p50_ms'))}</td>"
        f"<td>{_ms(lat.get(k, {}).get('p99_ms'))}</td><td>{lat.get(k, {}).get('ops', 0)}</td></tr>"
        for k in ("before", "during", "after"))
    checks = "".join(
        f"<tr><td>{esc(c['name'])}</td><td class='{esc(c['result'])}'>{esc(c['result'])}</td>"
        f"<td><pre>{esc(str(c.get('message', '')))}</pre></td></tr>" for c in report.get("checks", []))
    timeline = "".join(
        f"<tr><td>{e['t']:.2f}s</td><td>{esc(e['kind'])}</td><td>{esc(e['message'])}</td></tr>"
        for e in report.get("timeline", []))
    faults = "".join(
        f"<tr><td>{esc(f['id'])}</td><td>{esc(f['type'])}</td><td>{esc(f['member'])}</td>"
        f"<td>{esc(', '.join(f.get('peers') or []))}</td><td>{esc(f['status'])}</td><td>{esc(f.get('detail', ''))}</td>"
        f"</tr>" for f in report.get("faults", []))
    avail = m.get("availability", {})
    err = m.get("error_rate", {})
    svg = timeline_svg(report) if report.get("series", {}).get("buckets") else "<p>no workload data</p>"
    title = f"faultlab: {report.get('name')} — {verdict}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1000px}}
h1{{font-size:1.4em}} .verdict{{color:#fff;background:{color};padding:.2em .6em;border-radius:4px}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ddd;padding:.3em .6em;text-align:left;
vertical-align:top}} pre{{margin:0;white-space:pre-wrap;font-size:.85em}}
.Passed{{color:#2e7d32;font-weight:bold}} .Failed{{color:#c62828;font-weight:bold}}
.Unknown{{color:#6a1b9a;font-weight:bold}} .kv td:first-child{{color:#555}}
</style></head><body>
<h1>{esc(str(report.get('name')))} <span class="verdict">{esc(verdict)}</span></h1>
<p>{esc(str(report.get('message', '')))}</p>
<table class="kv">
<tr><td>run</td><td>{esc(str(report.get('run_id')))} (seed {esc(str(report.get('seed')))})</td></tr>
<tr><td>availability</td><td>{_pct(avail.get('overall'))} overall, {_pct(avail.get('during_faults'))} during
faults</td></tr>
<tr><td>error rate</td><td>{_pct(err.get('overall'))} overall, {_pct(err.get('during_faults'))} during faults</td></tr>
<tr><td>time to detect</td><td>{_s(m.get('time_to_detect_s'))}</td></tr>
<tr><td>MTTR</td><td>{_s(m.get('mttr_s'))} — {esc(str(m.get('mttr_note', '')))}</td></tr>
<tr><td>rollback</td><td>{'confirmed' if report.get('rollback_confirmed') else 'not confirmed'}</td></tr>
</table>
<h2>Timeline</h2>
{svg}
<h2>Latency</h2>
<table><tr><th>period</th><th>p50</th><th>p99</th><th>ops</th></tr>{rows}</table>
<h2>Checks</h2>
<table><tr><th>check</th><th>result</th><th>detail</th></tr>{checks}</table>
<h2>Faults</h2>
<table><tr><th>id</th><th>type</th><th>member</th><th>peers</th><th>status</th><th>detail</th></tr>{faults}</table>
<h2>Events</h2>
<table><tr><th>t</th><th>event</th><th>what</th></tr>{timeline}</table>
</body></html>
"""


def to_status(report: dict[str, Any]) -> Any:
    """The report as a ChaosExperiment `status` (what the Kubernetes runtime writes back)."""
    from datetime import UTC, datetime

    from faultlab.operator.api.chaos import ChaosExperimentStatus

    def ts(v: float | None) -> datetime | None:
        return None if v is None else datetime.fromtimestamp(v, UTC)

    m = report.get("metrics", {})
    lat = m.get("latency", {})
    name_of = {f["id"]: f["name"] for f in report.get("faults", [])}
    return ChaosExperimentStatus.model_validate({
        "phase": report.get("phase", "Pending"),
        "verdict": report.get("verdict"),
        "message": report.get("message", ""),
        "startedAt": ts(report.get("started_at")),
        "finishedAt": ts(report.get("finished_at")),
        "availability": (m.get("availability") or {}).get("overall"),
        "errorRate": (m.get("error_rate") or {}).get("overall"),
        "mttrSeconds": m.get("mttr_s"),
        "timeToDetectSeconds": m.get("time_to_detect_s"),
        "latency": {k: {"p50Ms": lat.get(k, {}).get("p50_ms"), "p99Ms": lat.get(k, {}).get("p99_ms")}
                    for k in ("before", "during", "after")},
        "checks": [{"name": c["name"], "result": c["result"], "message": str(c.get("message", ""))[:2000],
                    "operations": c.get("operations"), "durationSeconds": c.get("duration_seconds")}
                   for c in report.get("checks", [])],
        "injectedFaults": [{"fault": f["name"], "faultId": f["id"], "type": f["type"], "member": f["member"],
                            "agentStartedAt": f.get("agent_started_at"), "injectedAt": ts(f.get("injected_at")),
                            "recoveredAt": ts(f.get("recovered_at")), "detail": f.get("detail", "")}
                           for f in report.get("faults", [])],
        "timeline": [{"time": ts(e["at"]), "type": e["kind"], "message": e["message"],
                      "member": (e.get("data") or {}).get("member"),
                      "fault": name_of.get((e.get("data") or {}).get("fault", ""))}
                     for e in report.get("timeline", [])],
    })
