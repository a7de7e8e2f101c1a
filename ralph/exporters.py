"""Where a run's spans, metrics and logs go: the standard ``OTEL_*`` variables first, then the loop
file's ``telemetry:`` section. Remote exporters are guarded: a backend that is down or slow costs the
run one warning (for all signals together) and a bounded wait at the end, never a failed loop.

Imported only when telemetry is on; OpenTelemetry modules are imported inside the functions.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ralph.config import Telemetry as TelemetryConfig

EXPORT_TIMEOUT_S = 2.0  # one export request, retries included (the run's final flush waits less)
COOL_OFF_S = 30.0  # after a failure a signal skips its exports this long instead of queueing timeouts
SIGNALS = ("traces", "metrics", "logs")
PROTOCOLS = ("http/protobuf", "grpc")

_OTLP = {
    ("traces", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("logs", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
    ("logs", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
}
_CONSOLE = {
    "traces": ("opentelemetry.sdk.trace.export", "ConsoleSpanExporter"),
    "metrics": ("opentelemetry.sdk.metrics.export", "ConsoleMetricExporter"),
    "logs": ("opentelemetry.sdk._logs.export", "ConsoleLogRecordExporter"),
}
_RESULTS = {
    "traces": ("opentelemetry.sdk.trace.export", "SpanExportResult"),
    "metrics": ("opentelemetry.sdk.metrics.export", "MetricExportResult"),
    "logs": ("opentelemetry.sdk._logs.export", "LogRecordExportResult"),
}


def _load(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def load_leaf(module: str, name: str) -> Any:
    """``_load`` without running the package ``__init__`` of ``module`` when that package is not
    loaded yet. The OTLP JSON-file exporter's package imports its metrics and logs exporters too, and
    with them the SDK's metrics: 35-120 ms of every run's start-up for a trace exporter that needs
    none of it. The package is stood in for, while its submodule loads, by an unexecuted module with
    its ``__path__``; importing the package later runs its ``__init__`` as usual and finds the
    submodule already loaded."""
    package = module.rpartition(".")[0]
    if module in sys.modules or package in sys.modules:
        return _load(module, name)
    import importlib.util

    spec = importlib.util.find_spec(package)  # imports the grandparents, not the package
    if spec is None or spec.submodule_search_locations is None:
        return _load(module, name)
    stand_in = importlib.util.module_from_spec(spec)  # never executed: only its __path__ is used
    sys.modules[package] = stand_in
    try:
        return _load(module, name)
    finally:
        if sys.modules.get(package) is stand_in:
            del sys.modules[package]


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


def _config_exporter(signal: str, config: TelemetryConfig) -> str | None:
    return {"traces": config.exporter, "metrics": config.metrics_exporter, "logs": config.logs_exporter}[signal]


def endpoint(signal: str, config: TelemetryConfig, env: Mapping[str, str]) -> str | None:
    """The signal's own endpoint (a full URL), else the shared base endpoint."""
    return (_env(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
            or config.endpoint)


def protocol(signal: str, config: TelemetryConfig, env: Mapping[str, str]) -> str:
    return (_env(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
            or config.protocol or "http/protobuf").lower()


def names(signal: str, config: TelemetryConfig, env: Mapping[str, str]) -> list[str]:
    """``OTEL_<SIGNAL>_EXPORTER`` (a comma list), else the loop file's; unset: ``otlp`` when an
    endpoint is set, else nothing (only traces.jsonl, which is not an exporter name)."""
    raw = _env(env, f"OTEL_{signal.upper()}_EXPORTER") or _config_exporter(signal, config)
    if raw is None:
        return ["otlp"] if endpoint(signal, config, env) else []
    return [n for n in (part.strip().lower() for part in raw.split(",")) if n and n != "none"]


def _url(signal: str, config: TelemetryConfig, env: Mapping[str, str], proto: str) -> str | None:
    own = _env(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if own:
        return own
    base = _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or config.endpoint
    if base is None or proto == "grpc":
        return base  # None: the exporter's own default (localhost)
    return base.rstrip("/") + f"/v1/{signal}"


class _Capture(logging.Handler):
    """Keeps the SDK's own log lines (one per failed export, retries...) off the terminal; the guard
    turns the first of an export into its single warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self.local, "first", None) is None:  # the first says why; later ones "gave up"
            self.local.first = record.getMessage()

    def take(self) -> str | None:
        first: str | None = getattr(self.local, "first", None)
        self.local.first = None
        if first is None:
            return None
        transient = re.match(r"Transient error (.*) encountered while exporting \w+ batch", first, re.DOTALL)
        first = transient.group(1) if transient else first
        return first if len(first) <= 300 else first[:297] + "..."


_capture = _Capture()


def quiet_sdk_logs() -> None:
    sdk = logging.getLogger("opentelemetry")
    if _capture not in sdk.handlers:
        sdk.addHandler(_capture)
    sdk.propagate = False


def _stderr_warning(message: str) -> None:
    sys.stderr.write(f"ralph: warning: {message}\n")
    sys.stderr.flush()


def _stderr_note(message: str) -> None:
    sys.stderr.write(f"ralph: {message}\n")
    sys.stderr.flush()


# A backend that has no endpoint for a signal (Phoenix takes traces only) answers this: not a failure.
_NO_SUCH_SIGNAL = re.compile(r"\b(404|405|UNIMPLEMENTED)\b")


class Guard:
    """Shared by one run's remote exporters: the first failure of any signal prints the run's only
    export warning; a signal that failed skips its exports for ``COOL_OFF_S``. A backend answering
    404/405 to metrics or logs (it takes traces only) costs one quiet note instead, and that signal
    is not sent again in this run."""

    def __init__(self, warn: Callable[[str], None] | None = None, note: Callable[[str], None] | None = None) -> None:
        self.warn = warn or _stderr_warning
        self.note = note or _stderr_note
        self.noted = False
        self.warned = False
        self.failures: list[str] = []
        self.endpoints: set[str] = set()  # of every guarded exporter, to name in a warning
        self._skip_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def skipping(self, signal: str) -> bool:
        return time.monotonic() < self._skip_until.get(signal, 0.0)

    def failed(self, signal: str, where: str, reason: str) -> None:
        unsupported = _NO_SUCH_SIGNAL.search(reason) if signal != "traces" else None
        if unsupported:
            with self._lock:
                self._skip_until[signal] = float("inf")
                first, self.noted = not self.noted, True
            if first:
                base = re.sub(rf"/v1/{signal}$", "", where)
                self.note(f"telemetry: {base} takes traces only ({unsupported.group(1)} to OTLP {signal}); "
                          "metrics and logs it refuses are not sent again in this run")
            return
        with self._lock:
            self._skip_until[signal] = time.monotonic() + COOL_OFF_S
            self.failures.append(f"{signal}: {reason}")
            first, self.warned = not self.warned, True
        if first:
            self.warn(f"telemetry: cannot export {signal} to {where} ({reason}); the loop goes on, "
                      "later export errors of this run are not reported")


class Guarded:
    """An exporter that never raises, never blocks longer than its timeout, and reports to the guard."""

    def __init__(self, inner: Any, signal: str, where: str, guard: Guard) -> None:
        self._inner, self._signal, self._where, self._guard = inner, signal, where, guard
        guard.endpoints.add(re.sub(rf"/v1/{signal}$", "", where))
        result = _load(*_RESULTS[signal])
        self._success, self._failure = result.SUCCESS, result.FAILURE

    def export(self, *args: Any, **kwargs: Any) -> Any:
        if self._guard.skipping(self._signal):
            return self._failure
        _capture.take()
        try:
            result = self._inner.export(*args, **kwargs)
        except Exception as exc:  # an exporter bug must not end the loop
            self._guard.failed(self._signal, self._where, f"{type(exc).__name__}: {exc}")
            return self._failure
        if result != self._success:
            self._guard.failed(self._signal, self._where, _capture.take() or "export failed")
        return result

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        try:
            self._inner.shutdown(*args, **kwargs)
        except Exception as exc:
            self._guard.failed(self._signal, self._where, f"{type(exc).__name__}: {exc}")

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        try:
            return bool(self._inner.force_flush(timeout_millis))
        except Exception:
            return False

    def __getattr__(self, name: str) -> Any:  # preferred temporality and the like
        return getattr(self._inner, name)


def build(signal: str, config: TelemetryConfig, env: Mapping[str, str], guard: Guard,
          warnings: list[str]) -> list[tuple[Any, bool]]:
    """The exporters of one signal, each with whether it is remote (guarded, flushed with a budget)."""
    built: list[tuple[Any, bool]] = []
    for name in names(signal, config, env):
        if name == "console":
            built.append((_load(*_CONSOLE[signal])(out=sys.stderr), False))
            continue
        if name != "otlp":
            warnings.append(f"telemetry: unknown {signal} exporter {name!r} (known: otlp, console, none)")
            continue
        proto = protocol(signal, config, env)
        if proto not in PROTOCOLS:
            warnings.append(f"telemetry: OTLP protocol {proto!r} is not supported; using http/protobuf")
            proto = "http/protobuf"
        url = _url(signal, config, env, proto)
        try:
            exporter = _load(*_OTLP[signal, proto])(endpoint=url, timeout=EXPORT_TIMEOUT_S)
        except Exception as exc:  # a malformed endpoint, a missing optional package
            warnings.append(f"telemetry: cannot export {signal} to {url}: {exc}")
            continue
        built.append((Guarded(exporter, signal, url or f"the default {proto} endpoint", guard), True))
    return built
