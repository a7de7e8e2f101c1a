"""The embedded trace file's span processor: spans are encoded while children run.

Encoding a span to OTLP JSON costs more than making it (~70 µs against ~30 µs). The SDK's
``BatchSpanProcessor`` does it on its own thread, which on two cores takes the GIL from the thread
that is about to spawn the next child. Here an ended span waits, and the batch is handed to the
exporter by the thread that next starts a child, right after it did (``ralph.meanwhile``), when the
child runs and ralph would only wait, once ``min_batch`` spans wait or the last export was
``min_age`` seconds ago (a fast loop's spans go a few at a time, so that their encoding fits in the time
a short child runs; a wide batch's 32 at a time: a line's envelope costs a third of a span; a loop whose
iterations take longer has each one's spans written while the next one runs); or by
the thread ending a span once the oldest waited ``max_wait`` seconds or ``max_batch`` are waiting;
and at shutdown. The exporter and its encoding are the SDK's own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from ralph import meanwhile
from ralph.drain import Drain


class WhileChildrenRun(SpanProcessor):
    def __init__(self, exporter: Any, max_batch: int = 128, max_wait: float = 1.0, min_batch: int = 32,
                 min_age: float = 0.25) -> None:
        self._exporter, self._max_batch, self._max_wait = exporter, max_batch, max_wait
        self._min_batch, self._min_age = min_batch, min_age
        self._last_export = 0.0
        self._lock = threading.Lock()  # the queue
        self._drain = Drain(self._take, self._write, lambda: bool(self._pending))  # one export at a time
        self._pending: list[ReadableSpan] = []
        self._oldest = 0.0
        self._scheduled = False
        self._closed = False

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled or self._closed:
            return
        now = time.monotonic()
        with self._lock:
            if not self._pending:
                self._oldest = now
            self._pending.append(span)
            due = len(self._pending) >= self._max_batch or now - self._oldest >= self._max_wait
            schedule = not due and not self._scheduled
            self._scheduled = self._scheduled or schedule
        if due:
            self._export()
        elif schedule:
            meanwhile.later(self._scheduled_export, shared=True)

    def _scheduled_export(self) -> None:
        if self._closed:  # shut down meanwhile (a task left for later may come after)
            return
        with self._lock:
            ready = len(self._pending) >= self._min_batch or time.monotonic() - self._last_export >= self._min_age
            self._scheduled = not ready
        if ready:
            self._export()
        else:  # a few fresh spans: they go with the next child's
            meanwhile.later(self._scheduled_export, shared=True)

    def _export(self, wait: bool = False) -> None:
        """Export what waits, ``max_batch`` at a time. Unless ``wait``, a thread that finds another
        exporting leaves it to it (``ralph.drain``)."""
        self._drain(wait)

    def _take(self) -> list[ReadableSpan]:
        with self._lock:
            batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
        return batch

    def _write(self, batch: list[ReadableSpan]) -> None:
        self._last_export = time.monotonic()
        self._exporter.export(batch)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """What waits, handed over, and in the file: the exporter may write elsewhere (``ralph.tracewriter``)."""
        self._export(wait=True)
        return bool(self._exporter.force_flush(timeout_millis))

    def shutdown(self) -> None:
        closing = getattr(self._exporter, "closing", None)
        if closing is not None:  # a helper that never started is not started for the last spans
            closing()
        self._export(wait=True)
        self._closed = True
        self._exporter.shutdown()


def cached_resource(made: Any) -> Any:
    """The resource with its hash worked out once: the file exporter groups every span it writes by
    its resource, and ``Resource.__hash__`` serialises the attributes to JSON each time."""

    class _Resource(Resource):
        __slots__ = ()
        _hash = hash(made)

        def __hash__(self) -> int:
            return self._hash

        def __eq__(self, other: object) -> bool:
            return self is other or super().__eq__(other)

    return _Resource(made.attributes, made.schema_url)
