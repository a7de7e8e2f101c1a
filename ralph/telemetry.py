"""Spans for runs, sessions and steps, and the metrics and logs that go with them.
OpenTelemetry is imported only when a run starts tracing.

One trace per run: ``ralph.run`` -> ``ralph.iteration`` (one per session) -> ``ralph.step`` (one per
step attempt); an inbound ``TRACEPARENT`` makes ``ralph.run`` its child. With ``telemetry: {trace_per:
session}`` each iteration roots its own trace instead, linked to ``ralph.run``: backends that file a
whole trace under one session (Arize Phoenix) then list every session.

The embedded default writes OTLP JSON lines to ``traces.jsonl``; ``ralph.exporters`` adds OTLP or
console export from the standard ``OTEL_*`` variables or the loop file.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ralph import meanwhile
from ralph.config import Telemetry as TelemetryConfig

FLUSH_BUDGET_S = 1.2  # the final flush waits for remote backends this long at most: with the OTLP
# exporters' import (0.3-0.5 s here), a dead endpoint then adds under 2 s to a run even on a slow
# host (benchmarks/bench_telemetry.py); a live backend answers a final batch in well under a second.


def _nanos(seconds: float | None) -> int | None:
    """Epoch seconds as OTel's nanoseconds, rounded to the microsecond: an agent's millisecond times stay exact."""
    return None if seconds is None else round(seconds * 1e6) * 1000


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class Span:
    """A no-op span: what every caller gets when telemetry is off."""

    trace_id = ""
    span_id = ""

    def set(self, key: str, value: Any) -> None:
        pass

    def set_many(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set(key, value)

    def carrier(self) -> dict[str, str]:
        return {}

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        """A span event (a usage-limit pause)."""

    def activate(self) -> contextlib.AbstractContextManager[Any]:
        """Make this the current span (log records and metric exemplars pick it up)."""
        return contextlib.nullcontext()

    def end(self, error: str | None = None, description: str | None = None, at: float | None = None) -> None:
        """``at``: when it ended (epoch seconds), for spans of what the agent reported afterwards."""

    def end_later(self, error: str | None = None, description: str | None = None) -> None:
        """Ends now, as recorded; the SDK's work for it waits for the next child's run (or the loop's end)."""
        self.end(error, description)


class _OtelSpan(Span):
    """An SDK span; or one to be made (``make``) while the next child runs (``ralph.meanwhile``): its
    IDs are drawn at once (for TRACEPARENT and the history), its start time kept, its attributes
    gathered; whatever needs the SDK's span first (its end, an event, a child made at once) makes it."""

    def __init__(self, span: Any, name: str, attributes: Mapping[str, Any], metrics: Any,
                 make: Callable[[], Any] | None = None, context: Any = None,
                 start_attributes: dict[str, Any] | None = None) -> None:
        self._span, self._name, self._metrics, self._make = span, name, metrics, make
        self._attributes = dict(attributes)  # also when not sampled: metrics still need them
        self._start_attributes = start_attributes  # what the span is made with, while not made yet
        self._started = time.monotonic()
        self._context = span.get_span_context() if span is not None else context
        self.trace_id = format(self._context.trace_id, "032x")
        self.span_id = format(self._context.span_id, "016x")

    def made(self) -> None:
        if self._span is None and self._make is not None:
            self._span, self._make = self._make(), None

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            if self._span is None and self._start_attributes is not None:
                self._start_attributes[key] = value
            else:
                self._span.set_attribute(key, value)
            self._attributes[key] = value

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.made()
        self._span.add_event(name, {k: v for k, v in attributes.items() if v is not None})

    def carrier(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        _propagator().inject(carrier, self.parent_context())
        return {k.upper(): v for k, v in carrier.items()}

    def parent_context(self) -> Any:
        """The OTel context with this span as the parent, made or not."""
        from opentelemetry import trace

        return trace.set_span_in_context(self._span if self._span is not None
                                         else trace.NonRecordingSpan(self._context))

    def activate(self) -> contextlib.AbstractContextManager[Any]:
        from opentelemetry import trace

        self.made()
        return trace.use_span(self._span, end_on_exit=False, record_exception=False,
                              set_status_on_exception=False)

    def end(self, error: str | None = None, description: str | None = None, at: float | None = None,
            took: float | None = None) -> None:
        self.made()
        if error:
            from opentelemetry.trace import Status, StatusCode

            self.set("error.type", error)
            self._span.set_status(Status(StatusCode.ERROR, description or error))
        if self._metrics is not None:
            with self.activate(), contextlib.suppress(Exception):  # metrics must never fail a loop
                self._metrics.span_ended(self._name, self._attributes,
                                         time.monotonic() - self._started if took is None else took)
        self._span.end(end_time=_nanos(at))

    def end_later(self, error: str | None = None, description: str | None = None) -> None:
        at, took = time.time(), time.monotonic() - self._started
        meanwhile.later(lambda: self.end(error, description, at, took))

    @property
    def otel(self) -> Any:
        self.made()
        return self._span


_PROPAGATOR: list[Any] = []


def _propagator() -> Any:
    if not _PROPAGATOR:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _PROPAGATOR.append(TraceContextTextMapPropagator())
    return _PROPAGATOR[0]


class Telemetry:
    """No-op tracer; ``setup`` returns the real one when tracing is on."""

    enabled = False
    capture_content = False  # prompts, model text, tool input/output into spans (ralph.semconv)
    warnings: list[str]

    def __init__(self) -> None:
        self.warnings = []

    def span(self, name: str, attributes: Mapping[str, Any], parent: Span | None = None,
             carrier: Mapping[str, str] | None = None, start: float | None = None, later: bool = False) -> Span:
        """``start``: when it started (epoch seconds) if not now. ``later``: the SDK's span may be made
        while the next child runs (its IDs and start time are this moment's)."""
        return Span()

    def shutdown(self) -> None:
        pass


class _OtelTelemetry(Telemetry):
    enabled = True

    def __init__(self, provider: Any, local: list[Callable[[], Any]], remote: list[Callable[[], Any]], metrics: Any,
                 log_handler: Any, guard: Any, trace_per: str, ids: Any = None) -> None:
        super().__init__()
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        # Looked up once: a span is made several times an iteration.
        self._context, self._trace = otel_context, trace
        self._tracer = provider.get_tracer("ralph")
        self._ids = ids  # _preset_ids()'s, when spans may be made later (the default sampler only)
        self._local, self._remote, self._metrics = local, remote, metrics
        self._log_handler, self.guard, self._trace_per = log_handler, guard, trace_per
        self._closed = False

    def span(self, name: str, attributes: Mapping[str, Any], parent: Span | None = None,
             carrier: Mapping[str, str] | None = None, start: float | None = None, later: bool = False) -> Span:
        otel_context, trace = self._context, self._trace
        links = None
        inherited: dict[str, Any] = {}
        if isinstance(parent, _OtelSpan):
            if "ralph.loop" in parent._attributes:  # a metric label of the step spans below
                inherited["ralph.loop"] = parent._attributes["ralph.loop"]
            if name == "ralph.iteration" and self._trace_per == "session":
                context, links = otel_context.Context(), [trace.Link(parent._context)]
            else:
                context = parent.parent_context()
        elif carrier:
            context = _propagator().extract({k.lower(): v for k, v in carrier.items()})
        else:
            context = None
        attrs = {k: v for k, v in attributes.items() if v is not None}
        if later and self._ids is not None:
            return self._later(name, context, links, attrs, inherited, start)
        span = self._tracer.start_span(name, context=context, attributes=attrs, links=links,
                                       start_time=_nanos(start))
        return _OtelSpan(span, name, {**inherited, **attrs}, self._metrics)

    def _later(self, name: str, context: Any, links: Any, attrs: dict[str, Any], inherited: dict[str, Any],
               start: float | None) -> Span:
        """A span whose SDK object is made while the next child runs: what the SDK would draw (its IDs;
        the parent's trace and sampling under the default sampler) is drawn now."""
        trace, ids = self._trace, self._ids
        parent = trace.get_current_span(context).get_span_context() if context is not None else None
        if parent is not None and parent.is_valid:
            trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
        else:
            trace_id, flags, state = ids.generate_trace_id(), trace.TraceFlags(trace.TraceFlags.SAMPLED), None
        own = trace.SpanContext(trace_id, ids.generate_span_id(), is_remote=False, trace_flags=flags,
                                trace_state=state)
        start_ns = _nanos(start) if start is not None else time.time_ns()

        def make() -> Any:
            ids.preset((own.trace_id, own.span_id))
            try:
                return self._tracer.start_span(name, context=context, attributes=attrs, links=links,
                                               start_time=start_ns)
            finally:
                ids.preset(None)

        span = _OtelSpan(None, name, {**inherited, **attrs}, self._metrics, make, own, attrs)
        meanwhile.later(span.made)
        return span

    def shutdown(self) -> None:
        """Flush traces.jsonl first and fully; then every remote exporter at once, within a budget."""
        if self._closed:
            return
        self._closed = True
        if self._log_handler is not None:
            from ralph import runlog

            runlog.detach(self._log_handler)
        for close in self._local:
            close()
        threads = [threading.Thread(target=close, name="ralph-telemetry-flush", daemon=True)
                   for close in self._remote]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + FLUSH_BUDGET_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):  # a backend that never answers: leave it behind
            where = ", ".join(sorted(self.guard.endpoints)) or "the backend"
            self.guard.failed("telemetry", where, f"no answer within {FLUSH_BUDGET_S:g}s")


def _preset_ids() -> Any:
    """The SDK's random IDs, unless a span made later hands it the ones it drew when it began."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class PresetIds(RandomIdGenerator):
        def __init__(self) -> None:
            self._local = threading.local()

        def preset(self, ids: tuple[int, int] | None) -> None:
            self._local.ids = ids

        def generate_span_id(self) -> int:
            ids = getattr(self._local, "ids", None)
            return ids[1] if ids else super().generate_span_id()

        def generate_trace_id(self) -> int:
            ids = getattr(self._local, "ids", None)
            return ids[0] if ids else super().generate_trace_id()

    return PresetIds()


def enabled(config: TelemetryConfig, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return config.enabled and not _truthy(env.get("OTEL_SDK_DISABLED"))


def setup(state_dir: Path, config: TelemetryConfig, env: Mapping[str, str] | None = None,
          warn: Callable[[str], None] | None = None, parallel: int = 1) -> Telemetry:
    """The run's telemetry. ``warn`` receives the one export-failure warning (default: stderr);
    ``parallel``: how many loops run at once (a batch's ``parallel``)."""
    env = os.environ if env is None else env
    if not enabled(config, env):
        return Telemetry()
    from ralph import exporters
    from ralph.exporters import EXPORT_TIMEOUT_S

    notes: list[str] = []
    guard = exporters.Guard(warn)
    spans, metric_exporters, log_exporters = (exporters.build(signal, config, env, guard, notes)
                                              for signal in exporters.SIGNALS)
    if not (config.file or spans or metric_exporters or log_exporters):
        tel = Telemetry()
        tel.warnings = notes
        return tel
    exporters.quiet_sdk_logs()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from ralph.tracefile import cached_resource

    service = env.get("OTEL_SERVICE_NAME") or config.service_name or "ralph"
    resource = cached_resource(Resource.create({"service.name": service}))
    # Spans made later draw their IDs first (the default sampler decides by the parent alone: an
    # OTEL_TRACES_SAMPLER of the user's may not, so then every span is made at once).
    ids = _preset_ids()
    lazy = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip() == "parentbased_always_on"
    provider = TracerProvider(resource=resource, shutdown_on_exit=False, id_generator=ids)
    local: list[Callable[[], Any]] = []  # flushed in order, fully: traces.jsonl must be complete
    remote: list[Callable[[], Any]] = []  # flushed side by side, within a budget
    if config.file:
        file_exporter = exporters.load_leaf("opentelemetry.exporter.otlp.json.file.trace_exporter", "FileSpanExporter")
        fd = os.open(state_dir / "traces.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        stream = os.fdopen(fd, "a", encoding="utf-8")
        from ralph.tracefile import WhileChildrenRun

        # At most 128 spans a line: encoding 512 at once grows the heap by MBs it never gives back. One loop:
        # 4 spans (two fast iterations) a line, whose encoding fits in the time a short child runs (32 at
        # once made one window in 16 outlast its child by ~1 ms). A batch's items share one GIL: the
        # encoding goes to a helper on another core, if there is one, 32 spans a message (fewer, longer
        # lines: a line's envelope costs a third of a span).
        if parallel > 1 and len(os.sched_getaffinity(0)) > 1:
            from ralph.tracewriter import Writer

            sink: Any = Writer(fd, resource, lambda: file_exporter(stream=stream))
        else:
            sink = file_exporter(stream=stream)
        file_processor = WhileChildrenRun(sink, max_batch=128, min_batch=4 if parallel <= 1 else 32)
        provider.add_span_processor(file_processor)
        local += [file_processor.shutdown, stream.close]  # the exporter leaves the stream open
    for exporter, is_remote in spans:
        processor = BatchSpanProcessor(exporter, export_timeout_millis=EXPORT_TIMEOUT_S * 1000)
        provider.add_span_processor(processor)
        (remote if is_remote else local).append(processor.shutdown)
    metrics = None
    if metric_exporters:
        from ralph import metrics as metrics_module

        metrics, meter_provider = metrics_module.setup(resource, metric_exporters, EXPORT_TIMEOUT_S)
        remote.append(meter_provider.shutdown)
    log_handler = None
    if log_exporters:
        log_handler, logger_provider = _log_handler(resource, log_exporters)
        remote.append(logger_provider.shutdown)
    tel = _OtelTelemetry(provider, local, remote, metrics, log_handler, guard, config.trace_per,
                         ids if lazy else None)
    tel.warnings = notes
    from ralph import semconv

    tel.capture_content = semconv.capture_content(config, env)
    return tel


def _log_handler(resource: Any, log_exporters: list[tuple[Any, bool]]) -> tuple[Any, Any]:
    """OTel's logging handler on the ``ralph.run`` logger: every run log record also goes out as an
    OTel log record, with ``session.id`` and the trace context of the span it was logged under."""
    import warnings

    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    from ralph import runlog
    from ralph.exporters import EXPORT_TIMEOUT_S

    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    for exporter, _remote in log_exporters:
        provider.add_log_record_processor(
            BatchLogRecordProcessor(exporter, export_timeout_millis=EXPORT_TIMEOUT_S * 1000))
    with warnings.catch_warnings():  # deprecated in favour of a contrib package; still the SDK's own
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = runlog.OtelBridge(LoggingHandler(logger_provider=provider))
    runlog.attach(handler)
    return handler, provider
