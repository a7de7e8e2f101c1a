"""traces.jsonl written by a helper process, so that a parallel batch's spans are encoded on the other core.

A batch's items share one GIL, and the file exporter's encoding (~70 µs a span, the SDK's own code)
was a seventh of a wide batch's time (2,000 items of ``sleep 0.05`` at ``parallel: 64``: 0.4 s of 2.7).
So a batch hands each lot of ended spans, as builtins through ``marshal`` (a few µs a span), down a pipe to
``python -m ralph.tracewriter``, which makes them ``ReadableSpan``\\ s again and gives them to the same
``FileSpanExporter``, writing the same file. A single loop keeps encoding in-process, in the time its
child runs (a helper would take the core the child runs on).

The helper ends when its pipe closes: at ralph's shutdown, which waits for it (traces.jsonl is whole
when ralph exits), or when ralph dies, even by ``kill -9`` (what it was handed is still written). If
the helper is gone, ralph encodes the rest itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import marshal
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

_HEAD = 4  # a message: its length (big-endian), then the ``marshal`` of a tuple of builtins
_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding this ralph
_WAIT_S = 60.0  # for the helper to finish the file at shutdown: it has only what is in the pipe left


def _context(ctx: Any) -> tuple[Any, ...] | None:
    if ctx is None:
        return None
    state = list(ctx.trace_state.items()) if ctx.trace_state else None
    return ctx.trace_id, ctx.span_id, int(ctx.trace_flags), state, ctx.is_remote


def _plain(span: Any) -> tuple[Any, ...]:
    """What the encoder reads of a ``ReadableSpan``, in builtins (the SDK's own objects hold locks)."""
    scope = span.instrumentation_scope
    return (span.name, _context(span.context), _context(span.parent), dict(span.attributes or {}),
            [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
            [(_context(link.context), dict(link.attributes or {})) for link in span.links],
            span.kind.value, span.status.status_code.value, span.status.description,
            span.start_time, span.end_time,
            (scope.name, scope.version, scope.schema_url) if scope else None,
            (span.dropped_attributes, span.dropped_events, span.dropped_links))


class Writer:
    """An exporter for ``tracefile.WhileChildrenRun``: ``export`` sends, ``shutdown`` waits for the file.

    The helper starts with the first lot of spans exported while items still run; a batch whose
    spans all end at once (a few items, started together) writes them in-process at its end."""

    def __init__(self, fd: int, resource: Any, local: Callable[[], Any]) -> None:
        """``fd``: traces.jsonl, opened for appending; ``local``: makes an in-process exporter on it,
        for when the helper does not start, ends early, or is not worth starting."""
        self._fd, self._resource, self._local_factory = fd, resource, local
        self._local: Any = None
        self._lock = threading.Lock()  # one message at a time in the pipe
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False  # tried: at most once

    def closing(self) -> None:
        """What is left goes in-process unless the helper runs already."""
        self._started = True

    def _start(self) -> None:
        self._started = True
        # The same ralph as this one's (-P: not a ralph/ folder where the user stands), in its own
        # session (the terminal's Ctrl-C is for ralph, which then closes the pipe).
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_HOME, env.get("PYTHONPATH")]))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "ralph.tracewriter", str(self._fd)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, pass_fds=(self._fd,), env=env, start_new_session=True)
        except OSError:
            return
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):  # many spans in the pipe while the helper is busy, not a blocked item
            fcntl.fcntl(self._proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        self._write(("resource", dict(self._resource.attributes), self._resource.schema_url))

    def _send(self, message: tuple[Any, ...]) -> bool:
        with self._lock:
            if not self._started:
                self._start()
            return self._proc is not None and self._write(message)

    def _write(self, message: tuple[Any, ...]) -> bool:
        data = marshal.dumps(message)
        try:
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(len(data).to_bytes(_HEAD, "big") + data)
            self._proc.stdin.flush()
            return True
        except (OSError, ValueError):  # the helper is gone: ralph writes the rest itself
            self._end()
            return False

    def _end(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            proc.wait(_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _in_process(self) -> Any:
        if self._local is None:
            self._local = self._local_factory()
        return self._local

    def export(self, spans: Sequence[Any]) -> Any:
        if self._send(("spans", [_plain(s) for s in spans])):
            from opentelemetry.sdk.trace.export import SpanExportResult

            return SpanExportResult.SUCCESS
        return self._in_process().export(spans)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Everything sent is in the file once the helper answers (it reads its pipe in order)."""
        with self._lock:
            if self._proc is not None and self._write(("flush",)):
                assert self._proc is not None and self._proc.stdout is not None
                return self._proc.stdout.read(1) == b"."
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._end()
        if self._local is not None:
            self._local.shutdown()


def _read(stream: BinaryIO) -> Any:
    head = stream.read(_HEAD)
    if len(head) < _HEAD:
        return None
    data = stream.read(int.from_bytes(head, "big"))
    return marshal.loads(data) if data else None  # noqa: S302 (builtins only, from ralph's own pipe)


def main(argv: list[str]) -> int:
    from opentelemetry.exporter.otlp.json.file.trace_exporter import FileSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

    from ralph.tracefile import cached_resource

    sdk_log = logging.getLogger("opentelemetry")  # as in ralph: a failed write is not the terminal's business
    sdk_log.addHandler(logging.NullHandler())
    sdk_log.propagate = False
    stream = os.fdopen(int(argv[0]), "a", encoding="utf-8")
    exporter = FileSpanExporter(stream=stream)
    scopes: dict[Any, Any] = {}
    resource: Any = None

    class Span(ReadableSpan):
        def __init__(self, dropped: tuple[int, int, int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._dropped = dropped

        dropped_attributes = property(lambda self: self._dropped[0])
        dropped_events = property(lambda self: self._dropped[1])
        dropped_links = property(lambda self: self._dropped[2])

    def context(plain: tuple[Any, ...] | None) -> Any:
        if plain is None:
            return None
        trace_id, span_id, flags, state, remote = plain
        return SpanContext(trace_id, span_id, remote, TraceFlags(flags), TraceState(state) if state else None)

    def span(plain: tuple[Any, ...]) -> Any:
        (name, ctx, parent, attributes, events, links, kind, code, description, start, end, scope,
         dropped) = plain
        if scope is not None and scope not in scopes:
            scopes[scope] = InstrumentationScope(*scope)
        return Span(dropped, name=name, context=context(ctx), parent=context(parent), resource=resource,
                    attributes=attributes, events=[Event(n, a, t) for n, a, t in events],
                    links=[Link(context(c), a) for c, a in links], kind=SpanKind(kind),
                    status=Status(StatusCode(code), description), start_time=start, end_time=end,
                    instrumentation_scope=scopes.get(scope))

    # Encoding makes many short-lived containers, freed by reference counting: the collector's default
    # pass every 700 took ~0.1 s of a 2,000-item batch's 4,000 spans.
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (message := _read(stdin)) is not None:
        if message[0] == "spans":
            exporter.export([span(p) for p in message[1]])
        elif message[0] == "resource":
            resource = cached_resource(Resource(message[1], message[2]))
        elif message[0] == "flush":
            stdout.write(b".")
            stdout.flush()
    exporter.shutdown()
    stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
