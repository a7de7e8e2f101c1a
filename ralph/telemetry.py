"""Spans for runs, sessions and steps. OpenTelemetry is imported only when a run starts tracing.

The embedded default writes OTLP JSON lines to ``traces.jsonl``; the standard ``OTEL_*`` variables
(which the SDK does not read for exporter choice by itself) add OTLP or console export.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ralph.config import Telemetry as TelemetryConfig

EXPORT_TIMEOUT_S = 2.0  # a dead backend may cost a run this much, once, at the final flush


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

    def end(self, error: str | None = None, description: str | None = None) -> None:
        pass


class _OtelSpan(Span):
    def __init__(self, span: Any) -> None:
        self._span = span
        ctx = span.get_span_context()
        self.trace_id = format(ctx.trace_id, "032x")
        self.span_id = format(ctx.span_id, "016x")

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def carrier(self) -> dict[str, str]:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(self._span))
        return {k.upper(): v for k, v in carrier.items()}

    def end(self, error: str | None = None, description: str | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        if error:
            self._span.set_attribute("error.type", error)
            self._span.set_status(Status(StatusCode.ERROR, description or error))
        self._span.end()

    @property
    def otel(self) -> Any:
        return self._span


class Telemetry:
    """No-op tracer; ``setup`` returns the real one when tracing is on."""

    enabled = False
    warnings: list[str]

    def __init__(self) -> None:
        self.warnings = []

    def span(self, name: str, attributes: Mapping[str, Any], parent: Span | None = None,
             carrier: Mapping[str, str] | None = None) -> Span:
        return Span()

    def shutdown(self) -> None:
        pass


class _OtelTelemetry(Telemetry):
    enabled = True

    def __init__(self, provider: Any) -> None:
        super().__init__()
        self._provider = provider
        self._tracer = provider.get_tracer("ralph")

    def span(self, name: str, attributes: Mapping[str, Any], parent: Span | None = None,
             carrier: Mapping[str, str] | None = None) -> Span:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if isinstance(parent, _OtelSpan):
            context = trace.set_span_in_context(parent.otel)
        elif carrier:
            context = TraceContextTextMapPropagator().extract({k.lower(): v for k, v in carrier.items()})
        else:
            context = None
        attrs = {k: v for k, v in attributes.items() if v is not None}
        return _OtelSpan(self._tracer.start_span(name, context=context, attributes=attrs))

    def shutdown(self) -> None:
        self._provider.shutdown()


def _exporter_names(config: TelemetryConfig, env: Mapping[str, str]) -> list[str]:
    raw = env.get("OTEL_TRACES_EXPORTER") or config.exporter
    endpoint = _endpoint(config, env)
    if raw is None:
        return ["otlp"] if endpoint else []
    return [n.strip().lower() for n in raw.split(",") if n.strip() and n.strip().lower() != "none"]


def _endpoint(config: TelemetryConfig, env: Mapping[str, str]) -> str | None:
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or config.endpoint


def _protocol(config: TelemetryConfig, env: Mapping[str, str]) -> str:
    return (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or config.protocol or "http/protobuf").strip().lower()


def _otlp_exporter(config: TelemetryConfig, env: Mapping[str, str]) -> Any:
    protocol = _protocol(config, env)
    explicit = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or config.endpoint
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=explicit or base, timeout=EXPORT_TIMEOUT_S)
    if protocol not in ("http/protobuf", "http/json"):
        raise ValueError(f"unsupported OTLP protocol {protocol!r}")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    endpoint = explicit or (base.rstrip("/") + "/v1/traces" if base else None)
    return HttpExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S)


def enabled(config: TelemetryConfig, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return config.enabled and not _truthy(env.get("OTEL_SDK_DISABLED"))


def setup(state_dir: Path, config: TelemetryConfig, env: Mapping[str, str] | None = None) -> Telemetry:
    env = os.environ if env is None else env
    if not enabled(config, env):
        return Telemetry()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    service = env.get("OTEL_SERVICE_NAME") or config.service_name or "ralph"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    warnings: list[str] = []
    if config.file:
        from opentelemetry.exporter.otlp.json.file import FileSpanExporter

        path = state_dir / "traces.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        stream = os.fdopen(fd, "a", encoding="utf-8")
        provider.add_span_processor(BatchSpanProcessor(FileSpanExporter(stream=stream), schedule_delay_millis=1000))
    for name in _exporter_names(config, env):
        try:
            if name == "otlp":
                exporter = _otlp_exporter(config, env)
            elif name == "console":
                exporter = ConsoleSpanExporter(out=sys.stderr)
            else:
                raise ValueError(f"unknown traces exporter {name!r}")
        except (ValueError, ImportError) as exc:
            warnings.append(f"telemetry: {exc}; spans go only to traces.jsonl")
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter, export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000)))
    tel = _OtelTelemetry(provider)
    tel.warnings = warnings
    return tel
