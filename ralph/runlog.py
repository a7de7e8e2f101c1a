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
import threading
from pathlib import Path
from typing import Any

from ralph.session import Session
from ralph.telemetry import Span

LOGGER = "ralph.run"

_parent = logging.getLogger(LOGGER)
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


class JsonlHandler(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._stream = os.fdopen(fd, "a", encoding="utf-8")
        self._write_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = getattr(record, "ralph", {})
        line = {"time": round(record.created, 6), "level": record.levelname.lower(),
                "message": record.getMessage(), **fields}
        with self._write_lock:
            self._stream.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
            self._stream.flush()

    def close(self) -> None:
        with self._write_lock:
            self._stream.close()
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

    def log(self, level: int, message: str, session: Session | None = None, span: Span | None = None,
            **fields: Any) -> None:
        ctx: dict[str, Any] = {"run_id": self.run_id, "session_id": session.id if session else None,
                               "iteration": session.iteration if session else None}
        if session and session.item is not None:
            ctx["item"] = session.item
        ctx["trace_id"] = span.trace_id if span and span.trace_id else None
        ctx["span_id"] = span.span_id if span and span.span_id else None
        ctx.update(fields)
        if not self.logger.isEnabledFor(level):
            return
        # A record made directly: Logger.log would first walk the stack for a caller nobody reads.
        record = self.logger.makeRecord(self.logger.name, level, "(unknown file)", 0, message, (), None,
                                        extra={"ralph": ctx})
        # Only OTel's log handler reads the current span; making it current costs more than the line.
        with span.activate() if span is not None and _bridged() else contextlib.nullcontext():
            self.logger.handle(record)

    def info(self, message: str, session: Session | None = None, span: Span | None = None, **fields: Any) -> None:
        self.log(logging.INFO, message, session, span, **fields)

    def warning(self, message: str, session: Session | None = None, span: Span | None = None,
                **fields: Any) -> None:
        self.log(logging.WARNING, message, session, span, **fields)

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
            handler.close()
