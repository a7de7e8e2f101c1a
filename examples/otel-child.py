#!/usr/bin/env python3
"""A child of ralph that joins its trace: use it as the agent or a step to see its own span land
under the step's span, in the same trace, tagged with the session.

    agent: {command: [python3, examples/otel-child.py]}

It reads the W3C trace context ralph hands every child (``TRACEPARENT``, ``TRACESTATE``), starts
its span as a child of it, and exports with the OpenTelemetry SDK:
- to the OTLP endpoint of the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL``), which ralph's children
  inherit, so the child's spans go wherever ralph's go;
- or, with ``CHILD_TRACES_FILE`` set, as OTLP JSON lines to that file;
- else to stderr.
The resource picks up ``OTEL_RESOURCE_ATTRIBUTES`` (ralph adds ``session.id``); the span also carries
``session.id`` itself, as backends such as Phoenix keep span attributes only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def exporter() -> Any:
    path = os.environ.get("CHILD_TRACES_FILE")
    if path:
        from opentelemetry.exporter.otlp.json.file import FileSpanExporter

        return FileSpanExporter(path)
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

            return Grpc()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http()  # the endpoint, headers and timeout come from the OTEL_* variables
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter(out=sys.stderr)


def main() -> int:
    session_id = os.environ.get("OPENCODE_SESSION_ID", "")
    parent = TraceContextTextMapPropagator().extract(
        {"traceparent": os.environ.get("TRACEPARENT", ""), "tracestate": os.environ.get("TRACESTATE", "")})
    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "otel-child"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter()))
    tracer = provider.get_tracer("otel-child")
    prompt = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    with tracer.start_as_current_span("otel-child.work", context=parent, attributes={
        "session.id": session_id,
        "ralph.step.name": os.environ.get("RALPH_STEP", ""),
        "otel_child.prompt_chars": len(prompt),  # how much it was asked, never what
    }) as span:
        ctx = span.get_span_context()
        print(f"otel-child: session {session_id} ({os.environ.get('OPENCODE_SESSION_TITLE', '')}), "
              f"trace {ctx.trace_id:032x}, span {ctx.span_id:016x}", flush=True)
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
