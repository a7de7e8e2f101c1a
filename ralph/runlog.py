"""The runner's own log records: ``logs/<run_id>/ralph.jsonl``, each labelled with the run, session,
iteration and the trace and span it belongs to. Records go through stdlib ``logging`` so other
handlers (an OTel log exporter) can see them too."""

from __future__ import annotations

import json
import logging
import os
import threading

from pathlib import Path
from typing import Any

from ralph.session import Session
from ralph.telemetry import Span

LOGGER = "ralph.run"


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


class RunLog:
    def __init__(self, run_id: str, path: Path | None) -> None:
        self.run_id = run_id
        self.logger = logging.getLogger(f"{LOGGER}.{run_id}")
        self.logger.propagate = False
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
        self.logger.log(level, message, extra={"ralph": ctx, "session.id": ctx["session_id"]})

    def info(self, message: str, session: Session | None = None, span: Span | None = None, **fields: Any) -> None:
        self.log(logging.INFO, message, session, span, **fields)

    def warning(self, message: str, session: Session | None = None, span: Span | None = None,
                **fields: Any) -> None:
        self.log(logging.WARNING, message, session, span, **fields)

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
            handler.close()


