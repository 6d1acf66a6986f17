"""An SVG of a ``run.py`` report: writes/s per system at each client count, p50 on every bar.

Plain SVG (no plotting library), grouped bars on a log scale so PySyncObj's in-process
numbers and a single client share one chart. ``python bench/raft/plot.py REPORT.json`` writes
``REPORT.svg`` beside it; ``run.py`` does so after every run.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from html import escape
from pathlib import Path
from typing import Any

COLORS = {"faultlab-pipeline": "#1f77b4", "faultlab": "#9ecae1", "faultlab-inprocess": "#08306b",
          "etcd": "#2ca02c", "pysyncobj": "#ff7f0e",
          "pysyncobj-threads": "#ffbb78", "grpc-floor": "#7f7f7f"}
_W, _H, _LEFT, _TOP, _BOTTOM = 900, 420, 70, 40, 70


def medians(report: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """system -> clients -> (median writes/s, median p50 ms) over the report's rounds."""
    rounds = report.get("rounds") or [report.get("systems", {})]
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in rounds[0]:
        runs = [r[name]["runs"] for r in rounds if "runs" in r.get(name, {})]
        if not runs:
            continue
        out[name] = {c: (statistics.median(x[c]["throughput"] for x in runs if c in x),
                         statistics.median(x[c]["p50_ms"] for x in runs if c in x)) for c in runs[0]}
    return out


def svg(report: dict[str, Any]) -> str:
    data = medians(report)
    systems = list(data)
    clients = sorted({c for by in data.values() for c in by}, key=int)
    top = max((t for by in data.values() for t, _ in by.values()), default=1.0)
    hi = 10 ** math.ceil(math.log10(max(top, 10)))
    lo = 10.0

    def y(v: float) -> float:
        v = min(max(v, lo), hi)
        return _TOP + (_H - _TOP - _BOTTOM) * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    plot_w = _W - _LEFT - 20
    group = plot_w / max(len(clients), 1)
    bar = group * 0.8 / max(len(systems), 1)
    rounds = len(report.get("rounds") or [None])
    title = (f"writes/s, 100-byte values, closed loop ({report.get('cpus', '?')} cpus"
             f"{f', median of {rounds} rounds' if rounds > 1 else ''}); label: p50 ms")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="100%" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{_LEFT}" y="20" font-size="13">{escape(title)}</text>']
    decade = lo
    while decade <= hi:
        yy = y(decade)
        out.append(f'<line x1="{_LEFT}" x2="{_W - 20}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
                   f'<text x="{_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{decade:,.0f}</text>')
        decade *= 10
    for gi, c in enumerate(clients):
        x0 = _LEFT + gi * group + group * 0.1
        out.append(f'<text x="{x0 + group * 0.4:.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle">'
                   f'{c} client{"s" if c != "1" else ""}</text>')
        for si, name in enumerate(systems):
            if c not in data[name]:
                continue
            t, p50 = data[name][c]
            bx, by = x0 + si * bar, y(t)
            out.append(f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bar * 0.9:.1f}" height="{_H - _BOTTOM - by:.1f}" '
                       f'fill="{COLORS.get(name, "#bbb")}"><title>{escape(name)}: {t:,.0f} writes/s, '
                       f'p50 {p50:.1f} ms</title></rect>'
                       f'<text x="{bx + bar * 0.45:.1f}" y="{by - 3:.1f}" text-anchor="middle" font-size="9">'
                       f'{p50:.1f}</text>')
    lx = _LEFT
    for name in systems:
        out.append(f'<rect x="{lx}" y="{_H - 30}" width="10" height="10" fill="{COLORS.get(name, "#bbb")}"/>'
                   f'<text x="{lx + 14}" y="{_H - 21}">{escape(name)}</text>')
        lx += 14 + 6 * len(name) + 14
    out.append("</svg>")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/raft/plot.py REPORT.json")
    path = Path(sys.argv[1])
    out = path.with_suffix(".svg")
    out.write_text(svg(json.loads(path.read_text())))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
