"""A run's metrics, derived from its spans as they end: runs and iterations by outcome, iteration and
step durations, cost and tokens where the agent reports them.

Labels are the loop, the outcome and (for steps) the step's kind and name: never the session or run
ID, which would make one series per session. Each value is recorded while its span is the current
span, so the SDK's default trace-based exemplar filter attaches an exemplar pointing at the trace.
Metrics leave the process only when a metrics exporter is set (an OTLP endpoint, or
``OTEL_METRICS_EXPORTER``); OpenTelemetry is imported only then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Seconds: a check takes a fraction of one, an agent session minutes to hours.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class Metrics:
    def __init__(self, meter: Any) -> None:
        self._runs = meter.create_counter("ralph.runs", "{run}", "Runs of a loop, by outcome")
        self._iterations = meter.create_counter("ralph.iterations", "{iteration}",
                                                "Iterations (sessions), by outcome")
        self._iteration_duration = meter.create_histogram(
            "ralph.iteration.duration", "s", "How long an iteration (session) took",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self._step_duration = meter.create_histogram(
            "ralph.step.duration", "s", "How long one step attempt took",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self._cost = meter.create_counter("ralph.cost", "USD", "What the agent reported it cost")
        self._tokens = meter.create_counter("ralph.tokens", "{token}", "Tokens the agent reported")

    def span_ended(self, name: str, attributes: Mapping[str, Any], seconds: float) -> None:
        """Called with the span current (for exemplars); ``attributes`` include inherited ``ralph.loop``."""
        loop = attributes.get("ralph.loop")
        if name == "ralph.run":
            self._runs.add(1, _labels(loop, attributes.get("ralph.outcome")))
        elif name == "ralph.iteration":
            labels = _labels(loop, attributes.get("ralph.outcome"))
            self._iterations.add(1, labels)
            self._iteration_duration.record(seconds, labels)
            cost = attributes.get("ralph.cost_usd")
            if isinstance(cost, int | float) and cost > 0:
                self._cost.add(cost, labels)
            for kind in ("input", "output"):
                tokens = attributes.get(f"ralph.usage.{kind}_tokens")  # the iteration's sum (ralph.semconv)
                if isinstance(tokens, int) and tokens > 0:
                    self._tokens.add(tokens, {**labels, "gen_ai.token.type": kind})
        elif name == "ralph.step":
            labels = _labels(loop, attributes.get("ralph.step.status"))
            labels["ralph.step.kind"] = str(attributes.get("ralph.step.kind", ""))
            labels["ralph.step.name"] = str(attributes.get("ralph.step.name", ""))
            self._step_duration.record(seconds, labels)


def _labels(loop: Any, outcome: Any) -> dict[str, str]:
    return {"ralph.loop": str(loop or ""), "ralph.outcome": str(outcome or "unknown")}


def setup(resource: Any, exporters: list[tuple[Any, bool]], export_timeout_s: float) -> tuple[Metrics, Any]:
    """A meter provider with one periodic reader per exporter; returns the metrics and the provider."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    readers = [PeriodicExportingMetricReader(exporter, export_timeout_millis=export_timeout_s * 1000)
               for exporter, _remote in exporters]
    provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    return Metrics(provider.get_meter("ralph")), provider
