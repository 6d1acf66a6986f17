"""Inline SVG timeline of an experiment: throughput, errors and latency over time.

Generated as plain SVG text (no JavaScript, no external assets) so the HTML report
is one self-contained file. Fault windows are shaded across every panel and leader
changes are marked with dashed lines.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["timeline_svg"]

_W = 960
_LEFT = 64
_RIGHT = 16
_PANEL_H = 130
_GAP = 28
_TOP = 24


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    for e in range(-3, 9):
        for m in (1, 2, 2.5, 5):
            cand = m * 10**e
            if cand >= v:
                return float(cand)
    return float(v)


def _fmt(v: float) -> str:
    return f"{v:g}" if v < 1000 else f"{v / 1000:g}k"


def timeline_svg(report: dict[str, Any]) -> str:
    series = report.get("series") or {}
    buckets: list[list[float | None]] = series.get("buckets") or []
    bucket_s = float(series.get("bucket_s") or 1.0)
    t0 = float(series.get("t0") or report.get("started_at") or 0.0)
    span = max((len(buckets) * bucket_s), 1.0)
    for w in report.get("windows", []):
        span = max(span, (w.get("end") or t0) - t0)
    plot_w = _W - _LEFT - _RIGHT

    def x(t_rel: float) -> float:
        return _LEFT + max(0.0, min(1.0, t_rel / span)) * plot_w

    panels: list[tuple[str, list[float | None], str, list[float | None] | None]] = [
        ("throughput (ok ops/s)", [float(b[1] or 0) / bucket_s for b in buckets], "#2b7bb9", None),
        ("errors (failed ops/s)", [float(b[2] or 0) / bucket_s for b in buckets], "#d7263d", None),
        ("latency p50 / p99 (ms)", [b[3] for b in buckets], "#3a9d5d", [b[4] for b in buckets]),
    ]
    height = _TOP + len(panels) * (_PANEL_H + _GAP) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" width="100%" '
           f'role="img" aria-label="experiment timeline" font-family="sans-serif" font-size="11">']
    out.append(f'<rect x="0" y="0" width="{_W}" height="{height}" fill="#fff"/>')
    bottom = _TOP + len(panels) * (_PANEL_H + _GAP) - _GAP
    for w in report.get("windows", []):
        start, end = w.get("start"), w.get("end")
        if start is None:
            continue
        x1, x2 = x(start - t0), x((end if end is not None else t0 + span) - t0)
        out.append(f'<rect x="{x1:.1f}" y="{_TOP}" width="{max(x2 - x1, 1):.1f}" height="{bottom - _TOP}" '
                   f'fill="#f4a261" fill-opacity="0.18"><title>{escape(str(w.get("label", "")))}</title></rect>')
    for i, (title, values, color, second) in enumerate(panels):
        y0 = _TOP + i * (_PANEL_H + _GAP)
        vals = [v for v in values if v is not None] + [v for v in (second or []) if v is not None]
        vmax = _nice_max(max(vals, default=0.0))
        out.append(f'<text x="{_LEFT}" y="{y0 - 6}" fill="#333" font-weight="bold">{escape(title)}</text>')
        out.append(f'<rect x="{_LEFT}" y="{y0}" width="{plot_w}" height="{_PANEL_H}" fill="none" stroke="#ccc"/>')
        for frac in (0.0, 0.5, 1.0):
            yy = y0 + _PANEL_H * (1 - frac)
            out.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#666">'
                       f'{_fmt(vmax * frac)}</text>')

        def y(v: float, y0: float = y0, vmax: float = vmax) -> float:
            return y0 + _PANEL_H * (1 - min(v, vmax) / vmax)

        for vs, col, dash in ((values, color, ""), (second, "#8e44ad", ' stroke-dasharray="4 2"')):
            if vs is None:
                continue
            path: list[str] = []
            for j, v in enumerate(vs):
                if v is None:
                    continue
                px = x((j + 0.5) * bucket_s)
                path.append(f'{"M" if not path else "L"}{px:.1f},{y(v):.1f}')
            if path:
                out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{col}" stroke-width="1.6"{dash}/>')
    for ch in report.get("leader_changes", []):
        lx = x(ch["at"] - t0)
        out.append(f'<line x1="{lx:.1f}" x2="{lx:.1f}" y1="{_TOP}" y2="{bottom}" stroke="#555" '
                   f'stroke-dasharray="3 3"><title>{escape(ch.get("message", ""))}</title></line>')
        out.append(f'<text x="{lx + 3:.1f}" y="{_TOP + 10}" fill="#555">{escape(str(ch.get("leader", "")))}</text>')
    step = _nice_max(span / 10)
    t = 0.0
    while t <= span + 1e-9:
        out.append(f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle" fill="#666">{t:g}s</text>')
        t += step
    legend_y = height - 6
    out.append(f'<text x="{_LEFT}" y="{legend_y}" fill="#666">shaded: fault windows · dashed vertical: leader '
               f'changes · latency: solid p50, dashed p99 · bucket {bucket_s:g}s</text>')
    out.append("</svg>")
    return "\n".join(out)
