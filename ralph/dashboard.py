"""The live batch table on a TTY: one row per item (state, iteration, session, last step, elapsed).

The children's labelled lines still scroll above the table; only the table is redrawn in place.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from ralph.console import RichConsole
from ralph.session import Session

FINAL_STYLES = {"complete": "green", "exhausted": "red", "failed": "red", "interrupted": "yellow"}


@dataclass
class ItemRow:
    item: str
    state: str = "pending"  # pending | running | complete | exhausted | failed | interrupted
    iteration: int = 0
    session: str = ""
    last: str = ""  # the last step or iteration result, e.g. "agent ok"
    started: float | None = None  # time.monotonic()
    ended: float | None = None

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else now) - self.started


def _fmt_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _shown(rows: list[ItemRow], max_rows: int) -> list[ItemRow]:
    """All rows if they fit; else what matters now: running, then the latest ended, then pending."""
    if len(rows) <= max_rows:
        return rows
    running = [r for r in rows if r.state == "running"]
    ended = sorted((r for r in rows if r.ended is not None), key=lambda r: r.ended or 0.0, reverse=True)
    pending = [r for r in rows if r.state == "pending"]
    keep = {id(r) for r in (running + ended + pending)[:max_rows]}
    return [r for r in rows if id(r) in keep]


def render_table(rows: list[ItemRow], now: float, width: int = 80, max_rows: int = 30) -> Any:
    """A rich Table of the items (a pure function of the rows, so it can be tested as is)."""
    from rich.table import Table
    from rich.text import Text

    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = " · ".join(f"{n} {state}" for state, n in counts.items())
    shown = _shown(rows, max_rows)
    hidden = len(rows) - len(shown)
    table = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True,
                  caption=summary + (f" · {hidden} not shown" if hidden else ""), caption_justify="left")
    # Fixed widths for the short columns (rich would squeeze them all alike); the free-text `last`
    # takes what is left, and goes when nothing is.
    item_w = min(30, max([4, *(len(r.item) for r in shown)]))
    fixed = {"item": item_w, "state": 11, "iter": 4, "elapsed": 7, "session": 30}
    last_w = min(60, width - sum(fixed.values()) - len(fixed))  # one space between columns
    for col, w in fixed.items():
        table.add_column(col, width=w, no_wrap=True, overflow="ellipsis",
                         justify="right" if col in ("iter", "elapsed") else "left")
    if last_w >= 8:
        table.add_column("last", width=last_w, no_wrap=True, overflow="ellipsis")
    for r in shown:
        style = FINAL_STYLES.get(r.state, "cyan" if r.state == "running" else "dim")
        cells: list[Text | str] = [Text(r.item), Text(r.state, style=style), str(r.iteration or ""),
                                   _fmt_elapsed(r.elapsed(now)), r.session, Text(r.last)]
        table.add_row(*cells[:len(table.columns)])
    return table


class BatchConsole(RichConsole):
    """The plain labelled lines, plus the live table of items at the bottom."""

    def __init__(self, quiet: bool = False) -> None:
        self._rows: dict[str, ItemRow] = {}
        self._rows_lock = threading.Lock()  # workers update rows while the Live thread renders them
        super().__init__(quiet)

    def _render(self) -> Any:
        with self._rows_lock:
            rows = [replace(r) for r in self._rows.values()]
        if not rows:
            return self._text("")
        width, height = (self._rc.size.width, self._rc.size.height) if hasattr(self, "_rc") else (80, 30)
        return render_table(rows, time.monotonic(), width, max(5, height - 8))

    def _update(self, item: str | None, **fields: Any) -> None:
        if item is None:
            return
        with self._rows_lock:
            row = self._rows.setdefault(item, ItemRow(item))
            for key, value in fields.items():
                setattr(row, key, value)
            if row.started is None and row.state == "running":
                row.started = time.monotonic()

    def batch_start(self, items: list[str]) -> None:
        with self._rows_lock:
            for item in items:
                self._rows.setdefault(item, ItemRow(item))

    def iteration_start(self, session: Session) -> None:
        super().iteration_start(session)
        self._update(session.item, state="running", iteration=session.iteration, session=session.id, last="")

    def step_end(self, session: Session, step: str, status: str, exit_code: int | None, duration: float,
                 attempt: int = 1, reason: str | None = None) -> None:
        super().step_end(session, step, status, exit_code, duration, attempt, reason)
        self._update(session.item, last=f"{step} {status}")

    def iteration_end(self, session: Session, status: str, detail: str = "") -> None:
        super().iteration_end(session, status, detail)
        self._update(session.item, last=f"iteration {status}")

    def paused(self, session: Session, until: float, why: str) -> None:
        super().paused(session, until, why)
        self._update(session.item, last=f"paused until {time.strftime('%H:%M:%S', time.localtime(until))} ({why})")

    def item_end(self, item: str, status: str, reason: str, iterations: int) -> None:
        super().item_end(item, status, reason, iterations)
        self._update(item, state=status, last=reason, ended=time.monotonic())

    def status(self, text: str) -> None:
        """Parallel items have no single status line: the table says it all."""

    def close(self) -> None:
        self._live.stop()
        final = self._render()
        if self._rows:  # the last table stays on screen as the batch's summary
            self._rc.print(final)
