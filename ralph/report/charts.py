"""Geometry of the report's two pictures, drawn as inline SVG by the template (so they show with
JavaScript off): the timeline of sessions and their steps per item, and cost / tokens / changed lines
per iteration. Only numbers and the records' own strings come out of here; the template escapes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ralph.report import model

LABEL = 170  # the item names' column, in SVG units
WIDTH = 1000
ROW = 16
BAR = 11
AXIS = 22


@dataclass
class Bar:
    x: float
    w: float
    status: str
    tip: str
    # The session's steps as SVG path data (one path, not one rect per step: 10,000 steps in a big
    # batch): those that went well, and those that failed. Only numbers and path commands.
    steps_ok: str = ""
    steps_bad: str = ""


@dataclass
class Row:
    label: str
    y: int
    failed: bool
    bars: list[Bar]


@dataclass
class Timeline:
    height: int
    rows: list[Row]
    ticks: list[tuple[float, str]]


def _clock(ts: float, span: float) -> str:
    fmt = "%H:%M:%S" if span < 86400 else "%m-%d %H:%M"
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


def _offset(seconds: float, span: float) -> str:
    return f"{seconds:.2f}s" if span < 10 else fmt_duration(seconds)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def timeline(report: model.Report, now: float) -> Timeline:
    sessions = report.sessions
    if not sessions:
        return Timeline(AXIS, [], [])
    start = min(s.started for s in sessions)
    end = max((s.ended or now) for s in sessions)
    span = max(end - start, 1e-3)
    scale = (WIDTH - LABEL - 8) / span

    def x(ts: float) -> float:
        return round(LABEL + (ts - start) * scale, 1)

    def w(a: float, b: float | None) -> float:
        return round(max(((b or now) - a) * scale, 0.4), 1)

    by_item: dict[str | None, list[model.Session]] = {}
    for s in sessions:
        by_item.setdefault(s.item, []).append(s)
    failed = {i.item for i in report.items if i.succeeded is False}
    rows = []
    for n, (item, own) in enumerate(by_item.items()):
        bars, y = [], AXIS + n * ROW
        for s in own:
            tip = f"#{s.iteration} {s.status} {fmt_duration(s.duration)} · {s.id}"
            ok: list[str] = []
            bad: list[str] = []
            for t in s.steps:
                width = w(t.started, t.ended)
                if width >= 0.5:  # a step narrower than half a unit is not seen
                    path = f"M{x(t.started)} {y + 6}h{width}v4h-{width}z"
                    (ok if t.status in ("ok", "running") else bad).append(path)
            bars.append(Bar(x(s.started), max(w(s.started, s.ended), 0.8), s.status, tip, "".join(ok), "".join(bad)))
        label = item if item is not None else "run"
        rows.append(Row(label if len(label) <= 26 else label[:25] + "…", y, item in failed, bars))
    ticks = [(round(LABEL + k * (WIDTH - LABEL - 8) / 4, 1),
              _clock(start, span) if k == 0 else "+" + _offset(k * span / 4, span)) for k in range(5)]
    return Timeline(AXIS + len(rows) * ROW + 4, rows, ticks)


@dataclass
class Panel:
    name: str
    unit: str
    bars: list[tuple[float, float, float, str]]  # x, y, height, tip
    top: str
    empty: bool


def panels(report: model.Report) -> list[Panel]:
    """One small bar chart per measure, one bar per iteration number (summed over a batch's items)."""
    points = report.iterations
    measures: list[tuple[str, str, list[float | None]]] = [
        ("cost", "$", [p.cost_usd for p in points]), ("tokens", "", [float(p.tokens) for p in points]),
        ("changed lines", "", [float(p.changed_lines) if p.changed_lines is not None else None for p in points])]
    out = []
    height, width = 100.0, 300.0
    for name, unit, values in measures:
        present = [v for v in values if v is not None]
        top = max(present, default=0.0)
        slot = width / max(len(points), 1)
        bars = []
        for k, (p, v) in enumerate(zip(points, values, strict=True)):
            if v is None:
                continue
            h = round(v / top * (height - 4), 1) if top else 0.0
            shown = f"{unit}{v:.4f}" if unit else f"{v:,.0f}"
            bars.append((round(k * slot + slot * 0.15, 1), round(height - h, 1), h,
                         f"iteration {p.iteration}: {shown}"))
        label = (f"{unit}{top:.4f}" if unit else f"{top:,.0f}") if present else ""
        out.append(Panel(name, unit, bars, label, not present or not top))
    return out


def slot_width(report: model.Report) -> float:
    return round(300.0 / max(len(report.iterations), 1) * 0.7, 1)
