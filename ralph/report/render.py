"""The report's three forms: one self-contained HTML page (Jinja2, autoescaped), a compact Markdown
summary for ``$GITHUB_STEP_SUMMARY``, and the records as one JSON document."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ralph.report import charts, model

MD_ROWS = 500  # a job summary has a size limit (1 MiB); the HTML report has everything


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else ""


def _money(v: float | None) -> str:
    return "-" if v is None else f"${v:.4f}"


def _num(v: int | float | None) -> str:
    return "-" if v is None else f"{v:,}"


def _changes(c: model.Changes | None) -> str:
    if c is None:
        return ""
    files = "" if c.files_changed is None else f", {c.files_changed} file{'s' if c.files_changed != 1 else ''}"
    return f"+{c.insertions or 0} -{c.deletions or 0}{files}"


def html(report: model.Report, base: Path, trace_url: str | None = None) -> str:
    """The page; log files are linked relative to ``base``, the folder the page is written to."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("ralph.report", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)

    folders: dict[str, str] = {}

    def log_href(path: str | None) -> str:
        if not path:
            return ""
        # logs/<run>/<session>/<step>.log: one relpath per run folder, not one per step (10,000 of them).
        session_dir, name = os.path.split(path)
        run_dir, session = os.path.split(session_dir)
        if run_dir not in folders:
            folders[run_dir] = os.path.relpath(run_dir, base).replace(os.sep, "/")
        return quote(f"{folders[run_dir]}/{session}/{name}")

    def trace_href(trace_id: str | None) -> str:
        return trace_url.replace("{trace_id}", quote(trace_id, safe="")) if trace_url and trace_id else ""

    env.filters.update(when=_when, iso=_iso, money=_money, num=_num, dur=charts.fmt_duration, changes=_changes,
                       log_href=log_href, trace_href=trace_href)
    now = time.time()
    failed_items = {i.item for i in report.items if i.succeeded is False}
    anchors = {i.item: n for n, i in enumerate(report.items, 1)}
    # A batch's sessions grouped by item, in the items table's order (failed items first).
    rows = sorted(report.sessions, key=lambda s: (anchors.get(s.item, 0), s.started)) if report.kind == "batch" \
        else report.sessions
    return env.get_template("report.html.j2").render(
        r=report, t=report.totals, timeline=charts.timeline(report, now), panels=charts.panels(report),
        slot=charts.slot_width(report), failed_items=failed_items, label=charts.LABEL, width=charts.WIDTH,
        bar=charts.BAR, by_run={r.id: r for r in report.runs}, anchors=anchors,
        session_rows=rows)


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|#~"} | {"<": "&lt;", ">": "&gt;", "\n": " ", "\r": " "})


def _md(value: Any) -> str:
    """A table cell: Markdown and HTML (which GitHub renders in Markdown) neutralised, one line."""
    return str(value).replace("&", "&amp;").translate(_MD_SPECIAL)


def _code(value: Any) -> str:
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def markdown(report: model.Report) -> str:
    t = report.totals
    lines = [f"## ralph report: {_md(report.title)}", ""]
    head = f"**{_md(t.outcome)}**"
    if t.stop_reason:
        head += f": {_md(t.stop_reason)}"
    lines += [head, "",
              "| started | wall time | iterations | tokens in / out | cost |"
              + (" items failed |" if report.kind == "batch" else ""),
              "| --- | --- | --- | --- | --- |" + (" --- |" if report.kind == "batch" else ""),
              f"| {_when(t.started)} | {charts.fmt_duration(t.wall)} | {t.iterations} | {_num(t.tokens_in)} / "
              f"{_num(t.tokens_out)} | {_money(t.cost_usd)} |" + (f" {t.items_failed} of {t.items} |"
                                                              if report.kind == "batch" else ""), ""]
    if t.insertions is not None or t.deletions is not None:
        lines += [f"Changed: +{t.insertions or 0} -{t.deletions or 0}, {t.files_changed or 0} files", ""]
    if report.kind == "batch":
        lines += ["| item | status | iterations | cost | stop reason |", "| --- | --- | --- | --- | --- |"]
        for i in report.items[:MD_ROWS]:
            mark = "❌ " if i.succeeded is False else "✅ " if i.succeeded else ""
            lines.append(f"| {_md(i.item)} | {mark}{_md(i.status)} | {i.iterations} | {_money(i.cost_usd)} | "
                         f"{_md(i.stop_reason or '')} |")
        rows = len(report.items)
    else:
        lines += ["| # | session | status | duration | cost | changed |", "| --- | --- | --- | --- | --- | --- |"]
        for s in report.sessions[:MD_ROWS]:
            lines.append(f"| {s.iteration} | {_code(s.id)} {_md(s.title)} | {_md(s.status)} | "
                         f"{charts.fmt_duration(s.duration)} | {_money(s.cost_usd)} | {_changes(s.changes)} |")
        rows = len(report.sessions)
    if rows > MD_ROWS:
        lines.append(f"\n… and {rows - MD_ROWS} more (see the HTML report)")
    lines += ["", f"Runs: {', '.join(_code(r.id) for r in report.runs)}", ""]
    return "\n".join(lines)


def as_json(report: model.Report) -> str:
    return report.model_dump_json(indent=2) + "\n"
