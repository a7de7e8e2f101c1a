"""The runner's own log records: ``logs/<run_id>/ralph.jsonl``, each labelled with the run, session,
iteration and the trace and span it belongs to.

Records go through stdlib ``logging``: a run's logger (``ralph.run.<run_id>``) writes the JSON lines
and passes each record up to ``ralph.run``, where telemetry hangs an OpenTelemetry log handler when
logs are exported (``OtelBridge``). Each record is logged with its span current, so that handler
stamps it with the same trace and span IDs as the JSON line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ralph.drain import Outbox
from ralph.session import Session
from ralph.telemetry import Span

LOGGER = "ralph.run"

_parent = logging.getLogger(LOGGER)
# One encoder: json.dumps with any option set makes a new JSONEncoder for every call.
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode
_parent.propagate = False  # ralph's records never reach the root logger (and so never the terminal)
if not _parent.handlers:
    _parent.addHandler(logging.NullHandler())

# JSON field -> OTel log attribute (semantic-convention names where there are some).
_OTEL_NAMES = {
    "session_id": "session.id", "title": "session.title", "run_id": "ralph.run_id",
    "iteration": "ralph.iteration", "item": "ralph.item", "step": "ralph.step.name",
    "attempt": "ralph.attempt", "exit_code": "process.exit.code",
}
_NOT_ATTRIBUTES = {"trace_id", "span_id"}  # the OTel record carries its own trace context


def otel_attributes(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None or key in _NOT_ATTRIBUTES:
            continue
        out[_OTEL_NAMES.get(key, f"ralph.{key}")] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


_Record = tuple[float, str, str, dict[str, Any]]


class JsonlHandler(logging.Handler):
    """The JSON lines. Routine records (an iteration's and its steps' starts and ends) wait, as they
    are, and are encoded and written in one go by the thread that next starts a child, while it runs
    (``ralph.meanwhile``), or with the next other record, or at the loop's end: a ``kill -9`` loses at
    most the records of the iteration in flight and of the one that just ended."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._outbox: Outbox[_Record] = Outbox(self._write)

    def line(self, created: float, level: str, message: str, fields: dict[str, Any], later: bool = False) -> None:
        self._outbox.put((created, level, message, fields), later)

    def emit(self, record: logging.LogRecord) -> None:
        self.line(record.created, record.levelname.lower(), record.getMessage(), getattr(record, "ralph", {}),
                  getattr(record, "later", False))

    def _write(self, pending: list[_Record]) -> None:
        """Encoded and written by one thread at a time, outside the queue's lock: a batch's threads that
        log while one of them waits in write() do not queue up behind it (and hand the GIL around)."""
        fd = self._fd
        if fd < 0:
            return
        text = "".join(_encode({"time": round(created, 6), "level": level, "message": message, **fields}) + "\n"
                       for created, level, message, fields in pending)
        view = memoryview(text.encode("utf-8"))
        while view:  # O_APPEND: whole lines, even with another ralph (ralph exec) writing the same file
            view = view[os.write(fd, view):]

    def flush(self) -> None:
        self._outbox.flush()

    def close(self) -> None:
        self._outbox.flush()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        super().close()


class OtelBridge(logging.Handler):
    """Hands records to OpenTelemetry's ``LoggingHandler`` with flat attributes (``session.id``,
    ``ralph.iteration``...) instead of the nested ``ralph`` dict the JSON lines are built from."""

    def __init__(self, inner: logging.Handler) -> None:
        super().__init__()
        self.inner = inner

    def emit(self, record: logging.LogRecord) -> None:
        data = {k: v for k, v in record.__dict__.items() if k != "ralph"}
        data.update(otel_attributes(getattr(record, "ralph", {})))
        self.inner.emit(logging.makeLogRecord(data))


def _bridged() -> bool:
    return any(isinstance(h, OtelBridge) for h in _parent.handlers)


def attach(handler: logging.Handler) -> None:
    _parent.addHandler(handler)


def detach(handler: logging.Handler) -> None:
    _parent.removeHandler(handler)


class RunLog:
    def __init__(self, run_id: str, path: Path | None) -> None:
        self.run_id = run_id
        self.logger = logging.getLogger(f"{LOGGER}.{run_id}")
        self.logger.propagate = True  # up to ``ralph.run``: the OTel handler, when there is one
        self.logger.setLevel(logging.DEBUG)
        self._handler = JsonlHandler(path) if path else None
        if self._handler:
            self.logger.addHandler(self._handler)

    def add_handler(self, handler: logging.Handler) -> None:
        self.logger.addHandler(handler)
        self._alone = False

    _alone = True  # only the JSON lines read this run's records (no handler added)

    def log(self, level: int, message: str, session: Session | None = None, span: Span | None = None,
            later: bool = False, **fields: Any) -> None:
        ctx: dict[str, Any] = {"run_id": self.run_id, "session_id": session.id if session else None,
                               "iteration": session.iteration if session else None}
        if session and session.item is not None:
            ctx["item"] = session.item
        ctx["trace_id"] = span.trace_id if span and span.trace_id else None
        ctx["span_id"] = span.span_id if span and span.span_id else None
        ctx.update(fields)
        if not self.logger.isEnabledFor(level):
            return
        if self._handler is not None and self._alone and not _bridged():
            # Nobody else reads the record: the JSON line without a LogRecord and the logging machinery.
            self._handler.line(time.time(), logging.getLevelName(level).lower(), message, ctx, later)
            return
        # A record made directly: Logger.log would first walk the stack for a caller nobody reads.
        record = self.logger.makeRecord(self.logger.name, level, "(unknown file)", 0, message, (), None,
                                        extra={"ralph": ctx, "later": later})
        # Only OTel's log handler reads the current span; making it current costs more than the line.
        with span.activate() if span is not None and _bridged() else contextlib.nullcontext():
            self.logger.handle(record)

    def info(self, message: str, session: Session | None = None, span: Span | None = None, **fields: Any) -> None:
        self.log(logging.INFO, message, session, span, **fields)

    def routine(self, message: str, session: Session | None = None, span: Span | None = None,
                **fields: Any) -> None:
        """An info record that may wait for the next ``flush()`` (or the next other record)."""
        self.log(logging.INFO, message, session, span, True, **fields)

    def flush(self) -> None:
        if self._handler is not None:
            self._handler.flush()

    def warning(self, message: str, session: Session | None = None, span: Span | None = None,
                **fields: Any) -> None:
        self.log(logging.WARNING, message, session, span, **fields)

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
            handler.close()
