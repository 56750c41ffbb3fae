"""The device page's "Health over time" section: server-rendered SVG line charts.

Reads the device's stored history (fleet/health_history.py `query_points`, newest
`HISTORY_ROWS` rows) and draws, per camera, fps, latency p99, detections per frame,
mean confidence, max drift score and (when counters allow) dropped frames, plus
the device's temperature and outbox depth when reported. Time runs left to right
over the stored range (UTC labels); a gap longer than three typical intervals
breaks the line (the device was offline or not reporting). Series longer than
`MAX_CHART_POINTS` are averaged (or, for peaks such as latency p99, maxed) into
time buckets. Presentation attributes only, no inline style or script (CSP).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from fleet.dashboard_html import Safe, h, join, kv, section, utc
from fleet.health_history import CameraPoint, HealthPoint, query_points

HISTORY_ROWS = 2880
MAX_CHART_POINTS = 360
MARKER_POINTS = 60
"""Series with at most this many points also get a dot (with a tooltip) per point."""
PALETTE = ("#3b6fc8", "#2e9d5b", "#d99a1e", "#c8453b", "#7b4fc8", "#1e9dad", "#8a5a2b",
           "#d04f9a")  # fmt: skip
WIDTH, LEFT, RIGHT, TOP, PLOT_H = 560, 56, 14, 10, 150
LEGEND_ROW, LEGEND_PER_ROW = 16, 5

Point = tuple[float, float]
Series = tuple[str, list[Point]]


@dataclass(frozen=True)
class ChartSpec:
    title: str
    unit: str
    value: Callable[[CameraPoint], float | None]
    peak: bool = False
    """Downsample with max (latency p99, drift) instead of the mean."""
    y_max: float | None = None


CAMERA_CHARTS = (
    ChartSpec("frames/s processed", "fps", lambda c: c.fps),
    ChartSpec("frame latency p99", "ms", lambda c: c.latency_p99_ms, peak=True),
    ChartSpec("detections per frame", "", lambda c: c.detections_per_frame),
    ChartSpec("mean confidence", "", lambda c: c.confidence_mean, y_max=1.0),
    ChartSpec("max drift score", "", lambda c: c.drift_max, peak=True),
    ChartSpec("dropped frames", "%", lambda c: c.drop_pct, peak=True),
)


def history_section(s: Session, device_id: str) -> Safe:
    points = query_points(s, device_id, limit=HISTORY_ROWS)
    title = "Health over time"
    if not points:
        return section(title, Safe('<p class="note history-empty">No health history stored '
                                   "for this device yet.</p>"))  # fmt: skip
    t0, t1 = points[0].time, points[-1].time
    if t1 - t0 < 1.0:
        t0, t1 = t0 - 30.0, t1 + 30.0  # a single report: a one-minute frame around it
    cameras = sorted({cid for p in points for cid in p.cameras})
    charts = [_camera_chart(spec, points, cameras, t0, t1) for spec in CAMERA_CHARTS]
    charts += _device_charts(points, t0, t1)
    degraded = sum(1 for p in points if p.degraded)
    backends = sorted({p.backend for p in points if p.backend})
    facts = kv([
        ("time range (UTC)", f"{utc(points[0].time)} to {utc(points[-1].time)}"),
        ("samples", len(points)), ("cameras", ", ".join(cameras) or "-"),
        ("degraded samples", f"{degraded} of {len(points)}"),
        ("backends", ", ".join(backends) or "-"),
    ])  # fmt: skip
    body = join(c for c in charts if c)
    return section(title, join([facts, Safe(f'<div class="charts history">{body}</div>')]))


def _camera_chart(spec: ChartSpec, points: Sequence[HealthPoint], cameras: Sequence[str],
                  t0: float, t1: float) -> Safe:  # fmt: skip
    series: list[Series] = []
    for cid in cameras:
        pts = []
        for p in points:
            cam = p.cameras.get(cid)
            v = spec.value(cam) if cam is not None else None
            if v is not None:
                pts.append((p.time, v))
        if pts:
            series.append((cid, pts))
    return line_chart(spec.title, spec.unit, series, t0, t1, peak=spec.peak, y_max=spec.y_max)


def _device_charts(points: Sequence[HealthPoint], t0: float, t1: float) -> list[Safe]:
    temp = [(p.time, p.hottest_c) for p in points if p.hottest_c is not None]
    outbox = [(p.time, float(p.outbox_depth)) for p in points if p.outbox_depth is not None]
    out = []
    if temp:
        out.append(line_chart("hottest temperature", "°C", [("device", temp)], t0, t1, peak=True))
    if any(v for _t, v in outbox):
        out.append(line_chart("outbox depth", "msgs", [("device", outbox)], t0, t1, peak=True))
    return out


# --------------------------------------------------------------------------- chart
def line_chart(title: str, unit: str, series: Sequence[Series], t0: float, t1: float, *,
               peak: bool = False, y_max: float | None = None) -> Safe:  # fmt: skip
    """Lines over time, one per (name, [(t, v)]); empty string when no series has data."""
    series = [(name, _downsample(pts, t0, t1, peak)) for name, pts in series if pts]
    if not series:
        return Safe("")
    values = [v for _n, pts in series for _t, v in pts]
    frame = _Frame(t0, t1, min(0.0, *values), y_max if y_max is not None else _nice(max(values)))
    legend_rows = (len(series) + LEGEND_PER_ROW - 1) // LEGEND_PER_ROW
    height = TOP + PLOT_H + 34 + legend_rows * LEGEND_ROW
    parts = [_axes(frame, unit)]
    for i, (name, pts) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        parts.append(_series(frame, name, pts, colour, unit))
        lx = LEFT + (i % LEGEND_PER_ROW) * 110
        ly = TOP + PLOT_H + 40 + (i // LEGEND_PER_ROW) * LEGEND_ROW
        parts.append(
            f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="{ly}" font-size="11" fill="#333">{h(name[:16])}</text>'
        )
    label = f"{title} ({unit})" if unit else title
    svg = (
        f'<svg class="chart history-chart" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="{h(label)}">{"".join(parts)}</svg>'
    )
    span = f"{utc(t0)} to {utc(t1)} UTC"
    return Safe(f"<figure><figcaption>{h(label)} · {h(span)}</figcaption>{svg}</figure>")


@dataclass(frozen=True)
class _Frame:
    """The plot's ranges and their mapping to SVG coordinates."""

    t0: float
    t1: float
    lo: float
    hi: float

    def x(self, t: float) -> float:
        return LEFT + (t - self.t0) / ((self.t1 - self.t0) or 1.0) * (WIDTH - LEFT - RIGHT)

    def y(self, v: float) -> float:
        span = (self.hi - self.lo) or 1.0
        return TOP + PLOT_H - (min(v, self.hi) - self.lo) / span * PLOT_H


def _series(f: _Frame, name: str, pts: Sequence[Point], colour: str, unit: str) -> str:
    x, y = f.x, f.y
    out = [f'<g class="series" data-series="{h(name)}" data-points="{len(pts)}">']
    for seg in _segments(pts):
        if len(seg) == 1:
            t, v = seg[0]
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
            continue
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in seg)
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
        )
    if len(pts) <= MARKER_POINTS:
        out.extend(
            f'<circle class="pt" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2" fill="{colour}">'
            f"<title>{h(name)} {h(utc(t))} UTC: {_fmt(v)}{h(unit and ' ' + unit)}</title></circle>"
            for t, v in pts
        )
    out.append("</g>")
    return "".join(out)


def _axes(f: _Frame, unit: str) -> str:
    lo, hi, t0, t1, x, y = f.lo, f.hi, f.t0, f.t1, f.x, f.y
    grid, bottom = "#e3e6eb", TOP + PLOT_H
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{PLOT_H}" '
           f'fill="none" stroke="{grid}"/>']  # fmt: skip
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        yy = y(v)
        out.append(
            f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{WIDTH - RIGHT}" y2="{yy:.1f}" stroke="{grid}"/>'
            f'<text x="{LEFT - 4}" y="{yy + 4:.1f}" font-size="10" fill="#667085" '
            f'text-anchor="end">{_fmt(v)}</text>'
        )
    fmt = "%H:%M:%S" if t1 - t0 < 600 else ("%H:%M" if t1 - t0 <= 2 * 86400 else "%m-%d %H:%M")
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        anchor = ("start", "middle", "middle", "middle", "end")[i]
        out.append(
            f'<line x1="{x(t):.1f}" y1="{bottom}" x2="{x(t):.1f}" y2="{bottom + 4}" '
            f'stroke="#667085"/><text x="{x(t):.1f}" y="{bottom + 16}" font-size="10" '
            f'fill="#667085" text-anchor="{anchor}">{time.strftime(fmt, time.gmtime(t))}</text>'
        )
    out.append(
        f'<text x="{WIDTH - RIGHT}" y="{bottom + 28}" font-size="10" fill="#667085" '
        'text-anchor="end">time (UTC)</text>'
    )
    if unit:
        out.append(
            f'<text x="12" y="{TOP + PLOT_H / 2:.0f}" font-size="10" fill="#667085" '
            f'text-anchor="middle" transform="rotate(-90 12 {TOP + PLOT_H / 2:.0f})">'
            f"{h(unit)}</text>"
        )
    return "".join(out)


def _segments(pts: Sequence[Point]) -> list[list[Point]]:
    """Split where the time step exceeds three typical (median) steps."""
    if len(pts) < 3:
        return [list(pts)]
    steps = [b[0] - a[0] for a, b in itertools.pairwise(pts)]
    limit = 3 * max(statistics.median(steps), 1e-9)
    out, cur = [], [pts[0]]
    for step, p in zip(steps, pts[1:], strict=True):
        if step > limit:
            out.append(cur)
            cur = []
        cur.append(p)
    out.append(cur)
    return out


def _downsample(pts: Sequence[Point], t0: float, t1: float, peak: bool) -> list[Point]:
    """At most MAX_CHART_POINTS points: time buckets, mean (or max) value per bucket."""
    if len(pts) <= MAX_CHART_POINTS:
        return list(pts)
    width = (t1 - t0) / MAX_CHART_POINTS or 1.0
    buckets: dict[int, list[Point]] = {}
    for t, v in pts:
        key = min(MAX_CHART_POINTS - 1, max(0, int((t - t0) / width)))
        buckets.setdefault(key, []).append((t, v))
    out = []
    for _k, group in sorted(buckets.items()):
        ts, vs = [t for t, _v in group], [v for _t, v in group]
        out.append((sum(ts) / len(ts), max(vs) if peak else sum(vs) / len(vs)))
    return out


def _nice(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above v (1 for v <= 0)."""
    if v <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(v))
    return next(float(m * base) for m in (1, 2, 2.5, 5, 10) if m * base >= v)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
