"""What ``ralph run`` prints: prefixed child output, a header per iteration, a live status line on a
TTY (rich), plain lines otherwise, or one JSON event per line with ``--json``."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import IO, Any

from ralph.drain import Outbox
from ralph.session import Session

MAX_PENDING = 64 * 1024  # a child that never prints a newline still gets shown, in pieces


class LineSplitter:
    """Bytes in, complete lines out; a partial line waits for the rest (bounded)."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        if data.rfind(b"\n") < 0:
            data = self.pending + data
            self.pending = b"" if len(data) > MAX_PENDING else data
            return [data] if not self.pending else []
        # One split, no copy of the whole chunk: only the first line is glued to what was pending.
        lines = data.split(b"\n")
        if self.pending:
            lines[0] = self.pending + lines[0]
        self.pending = lines.pop()
        if len(self.pending) > MAX_PENDING:
            lines.append(self.pending)
            self.pending = b""
        return lines

    def flush(self) -> list[bytes]:
        rest, self.pending = self.pending, b""
        return [rest] if rest else []


def _label(session: Session, step: str) -> str:
    item = f"{session.item} " if session.item else ""
    return f"[{item}{session.iteration} {step}]"


class Console:
    """Plain lines, for pipes and CI logs."""

    def __init__(self, quiet: bool = False, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._lock = threading.Lock()  # warnings, and the rich console's prints: one at a time
        self._outbox: Outbox[str] = Outbox(self._write)

    def _print(self, text: str, later: bool = False, wait: bool = True) -> None:
        """``later``: a routine line (an iteration's or a step's start and end) may wait for the moment the
        next child runs (``ralph.meanwhile``), the next other line, or the loop's end. ``wait=False``: out
        now, by this thread or by the one writing (a batch's item ends)."""
        self._outbox.put(text, later, wait)

    def flush(self, wait: bool = True) -> None:
        self._outbox.flush(wait)

    def _write(self, lines: list[str]) -> None:
        with contextlib.suppress(ValueError, OSError):  # a flush left for later may come after close()
            for text in lines:  # not text + "\n": a megabyte copy per chunk of mirrored output
                self.out.write(text)
                self.out.write("\n")
            self.out.flush()

    def warn(self, message: str) -> None:
        with self._lock:
            self.err.write(f"ralph: warning: {message}\n")
            self.err.flush()

    def run_start(self, run_id: str, loop: str, file: str) -> None:
        self._print(f"ralph: run {run_id} of loop {loop} ({file})")

    def iteration_start(self, session: Session) -> None:
        item = f" [{session.item}]" if session.item else ""
        self._print(f"── iteration {session.iteration}{item} · {session.id} · {session.title}", later=True)

    def output_lines(self, session: Session, step: str, lines: list[bytes]) -> None:
        if self.quiet or not lines:
            return
        prefix = _label(session, step) + " "
        raw = b"\n".join(lines)
        if b"\r" not in raw and raw.count(b"\n") == len(lines) - 1:
            # The usual case (plain lines, no CR): prefix and decode the whole chunk at C speed. The
            # same text as line by line: a newline byte never sits inside a UTF-8 sequence.
            mark = prefix.encode()
            text = (mark + raw.replace(b"\n", b"\n" + mark)).decode("utf-8", "replace")
        else:
            text = "\n".join(prefix + line.decode("utf-8", "replace").rstrip("\r") for line in lines)
        self._print(text)

    def step_end(self, session: Session, step: str, status: str, exit_code: int | None, duration: float,
                 attempt: int = 1, reason: str | None = None) -> None:
        if status == "ok" and self.quiet:
            return
        why = f" ({reason})" if reason else ""
        again = f" attempt {attempt}" if attempt > 1 else ""
        self._print(f"{_label(session, step)} {status}{why}, exit {exit_code}{again}, {duration:.1f}s", later=True)

    def retry_wait(self, session: Session, step: str, seconds: float, attempt: int) -> None:
        self._print(f"{_label(session, step)} retrying in {seconds:.1f}s (attempt {attempt + 1})")

    def paused(self, session: Session, until: float, why: str) -> None:
        at = time.strftime("%H:%M:%S", time.localtime(until))
        self._print(f"{_label(session, 'agent')} paused until {at} ({why})")
        self.status(f"{session.loop} · paused until {at} ({why})")

    def iteration_end(self, session: Session, status: str, detail: str = "") -> None:
        item = f" [{session.item}]" if session.item else ""
        self._print(f"   iteration {session.iteration}{item} {status}{' · ' + detail if detail else ''}", later=True)

    def batch_start(self, items: list[str]) -> None:
        """The items this run will work on, before the first starts."""

    def item_end(self, item: str, status: str, reason: str, iterations: int) -> None:
        self._print(f"ralph: item {item}: {status} ({reason}) after {iterations} iteration(s)", wait=False)

    def run_end(self, run_id: str, status: str, exit_code: int, detail: str, stop_reason: str | None = None) -> None:
        self._print(f"ralph: {status}: {detail} (exit {exit_code})")

    def status(self, text: str) -> None:
        """The live line; only a TTY console shows it."""

    def close(self) -> None:
        self.flush()


class RichConsole(Console):
    """On a TTY: the same lines, plus a live status line at the bottom."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__(quiet)
        from rich.console import Console as RConsole
        from rich.live import Live
        from rich.text import Text

        self._text = Text
        self._rc = RConsole(highlight=False, soft_wrap=True)
        self._status = ""
        self._since = time.monotonic()
        self._live = Live(self._render(), console=self._rc, refresh_per_second=4, transient=True,
                          get_renderable=self._render)
        self._live.start()

    def _render(self) -> Any:
        if not self._status:
            return self._text("")
        elapsed = time.monotonic() - self._since
        return self._text(f"⏵ {self._status} · {elapsed:.0f}s", style="dim")

    def _print(self, text: str, later: bool = False, wait: bool = True) -> None:
        with self._lock:
            self._rc.print(self._text(text), markup=False, highlight=False)

    def flush(self, wait: bool = True) -> None:
        pass

    def status(self, text: str) -> None:
        self._status, self._since = text, time.monotonic()

    def close(self) -> None:
        self._live.stop()


class JsonConsole(Console):
    """``--json``: one JSON object per event, nothing else on stdout."""

    _ROUTINE = frozenset({"iteration.start", "step.end", "iteration.end"})

    def _event(self, event: str, **fields: Any) -> None:
        self._print(json.dumps({"event": event, "time": round(time.time(), 6), **fields}, ensure_ascii=False),
                    later=event in self._ROUTINE)

    def run_start(self, run_id: str, loop: str, file: str) -> None:
        self._event("run.start", run_id=run_id, loop=loop, file=file)

    def iteration_start(self, session: Session) -> None:
        self._event("iteration.start", **_ids(session), title=session.title)

    def output_lines(self, session: Session, step: str, lines: list[bytes]) -> None:
        if self.quiet:
            return
        for line in lines:
            self._event("output", **_ids(session), step=step, line=line.decode("utf-8", "replace"))

    def step_end(self, session: Session, step: str, status: str, exit_code: int | None, duration: float,
                 attempt: int = 1, reason: str | None = None) -> None:
        self._event("step.end", **_ids(session), step=step, attempt=attempt, status=status,
                    exit_code=exit_code, duration=round(duration, 6), reason=reason)

    def retry_wait(self, session: Session, step: str, seconds: float, attempt: int) -> None:
        self._event("retry.wait", **_ids(session), step=step, attempt=attempt, seconds=round(seconds, 3))

    def iteration_end(self, session: Session, status: str, detail: str = "") -> None:
        self._event("iteration.end", **_ids(session), status=status, detail=detail)

    def paused(self, session: Session, until: float, why: str) -> None:
        self._event("pause", **_ids(session), until=round(until, 3), reason=why)

    def batch_start(self, items: list[str]) -> None:
        self._event("batch.start", items=items)

    def item_end(self, item: str, status: str, reason: str, iterations: int) -> None:
        self._event("item.end", item=item, status=status, reason=reason, iterations=iterations)

    def run_end(self, run_id: str, status: str, exit_code: int, detail: str, stop_reason: str | None = None) -> None:
        self._event("run.end", run_id=run_id, status=status, exit_code=exit_code, detail=detail,
                    stop_reason=stop_reason)


def _ids(session: Session) -> dict[str, Any]:
    return {"run_id": session.run_id, "session_id": session.id, "iteration": session.iteration,
            "item": session.item}


def make_console(json_mode: bool, quiet: bool, batch: bool = False) -> Console:
    if json_mode:
        return JsonConsole(quiet)
    if sys.stdout.isatty():
        if batch:  # a live table of the items instead of one status line
            from ralph.dashboard import BatchConsole

            return BatchConsole(quiet)
        return RichConsole(quiet)
    return Console(quiet)
