"""Telemetry end to end through the real CLI: the span attributes of the contract, children joining
the trace, the exporters (file, OTLP to a real receiver, console, none), logs and metrics with
exemplars, a dead or silent backend, and OpenTelemetry imported only when needed."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpers import DUMP_ENV, PY, ROOT, imported_modules, python, ralph, read_dumps, write_loop, yaml_list

OTEL_CHILD = str(ROOT / "examples" / "otel-child.py")
# Flags: sampled (01), plus "random trace ID" (02) on traces that ralph itself starts.
TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0[13]")


# -- reading what ralph wrote --------------------------------------------------------------------------
def _value(v: dict[str, Any]) -> Any:
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    if "intValue" in v:
        return int(v["intValue"])
    return next(iter(v.values()), None)


def file_spans(path: Path) -> list[dict[str, Any]]:
    """Every span of an OTLP JSON lines file, with its resource's attributes."""
    out = []
    for line in path.read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            resource = {a["key"]: _value(a["value"]) for a in rs.get("resource", {}).get("attributes", [])}
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    out.append(
                        {
                            "name": s["name"],
                            "trace_id": s["traceId"],
                            "span_id": s["spanId"],
                            "parent_id": s.get("parentSpanId") or None,
                            "links": [link["spanId"] for link in s.get("links", [])],
                            "status": (s.get("status") or {}).get("code"),
                            "attributes": {a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                            "resource": resource,
                        }
                    )
    return out


def db_rows(state: Path, sql: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(state / "ralph.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    finally:
        db.close()


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ralph: warning:")]


# -- a real OTLP/HTTP endpoint in this process ----------------------------------------------------------
def _pb_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _pb_attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in kvs}


class Receiver:
    """Accepts OTLP/HTTP protobuf on /v1/traces, /v1/logs and /v1/metrics and keeps every body."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {"traces": [], "logs": [], "metrics": []}
        self.refuse: set[str] = set()  # signals answered with 405, as Phoenix answers metrics and logs
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                signal = self.path.rsplit("/", 1)[-1]
                receiver.bodies.setdefault(signal, []).append(body)
                self.send_response(405 if signal in receiver.refuse else 200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def raw(self) -> bytes:
        return b"".join(b for bodies in self.bodies.values() for b in bodies)

    def spans(self) -> list[dict[str, Any]]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        out = []
        for body in self.bodies["traces"]:
            req = ExportTraceServiceRequest.FromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    out += [
                        {
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_id": s.parent_span_id.hex() or None,
                            "attributes": _pb_attrs(s.attributes),
                            "resource": _pb_attrs(rs.resource.attributes),
                        }
                        for s in ss.spans
                    ]
        return out

    def logs(self) -> list[dict[str, Any]]:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        out = []
        for body in self.bodies["logs"]:
            for rl in ExportLogsServiceRequest.FromString(body).resource_logs:
                for sl in rl.scope_logs:
                    out += [
                        {
                            "body": r.body.string_value,
                            "trace_id": r.trace_id.hex(),
                            "span_id": r.span_id.hex(),
                            "severity": r.severity_text,
                            "attributes": _pb_attrs(r.attributes),
                        }
                        for r in sl.log_records
                    ]
        return out

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points (the protobuf messages), over every request."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

        out: dict[str, list[Any]] = {}
        for body in self.bodies["metrics"]:
            for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        data = getattr(m, m.WhichOneof("data"))
                        out.setdefault(m.name, []).extend(data.data_points)
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


# -- the loops ----------------------------------------------------------------------------------------
PID_STEP = [PY, "-c", "import os; print('pid', os.getpid())"]


def contract_loop(tmp_path: Path, dumps: Path, extra: str = "") -> Path:
    """Two iterations: a before step (shell string), the agent (a list, with a prompt), an after step
    that fails but may, and a check that never passes."""
    return write_loop(
        tmp_path,
        f"""
        name: spans
        title: "Spans #{{iteration}}"
        env: {{ENV_DUMP_DIR: "{dumps}", LOOP_SECRET: "loop-env-secret-1234"}}
        agent:
          command: {yaml_list(DUMP_ENV)}
          prompt: "prompt-secret-9012 for #{{iteration}}"
        steps:
          before: [{{name: prep, run: "echo prep $LOOP_SECRET"}}]
          after:
            - {{name: pid, run: {yaml_list(PID_STEP)}}}
            - {{name: lenient, run: "exit 5", continue_on_error: true}}
        until:
          max_iterations: 2
          command_succeeds: {yaml_list([PY, "-c", "raise SystemExit(1)"])}
        {extra}
    """,
    )


def test_every_span_carries_the_contract_attributes(tmp_path: Path, isolated: Path) -> None:
    dumps = tmp_path / "dumps"
    result = ralph("run", str(contract_loop(tmp_path, dumps)))
    assert result.returncode == 1, result.stderr  # the check never passes
    spans = file_spans(isolated / "traces.jsonl")
    (run,) = by_name(spans, "ralph.run")
    runs = db_rows(isolated, "SELECT * FROM runs")
    sessions = {r["iteration"]: r for r in db_rows(isolated, "SELECT * FROM sessions")}
    assert run["parent_id"] is None
    assert (run["trace_id"], run["span_id"]) == (runs[0]["trace_id"], runs[0]["span_id"])
    assert run["attributes"] == {
        "ralph.run_id": runs[0]["id"],
        "ralph.loop": "spans",
        "ralph.outcome": "exhausted",
        "ralph.stop_reason": "max_iterations",
        "process.exit.code": 1,
        "error.type": "exhausted",
        "openinference.span.kind": "CHAIN",
    }
    assert run["status"] == 2  # ERROR: the run failed
    assert run["resource"]["service.name"] == "ralph"

    iterations = {s["attributes"]["ralph.iteration"]: s for s in by_name(spans, "ralph.iteration")}
    assert sorted(iterations) == [1, 2]
    for number, it in iterations.items():
        row = sessions[number]
        assert it["parent_id"] == run["span_id"] and it["trace_id"] == run["trace_id"]
        assert (it["trace_id"], it["span_id"]) == (row["trace_id"], row["span_id"])
        expected = {
            "session.id": row["id"],
            "session.title": f"Spans #{number}",
            "ralph.iteration": number,
            "ralph.loop": "spans",
            "ralph.run_id": runs[0]["id"],
            "ralph.outcome": "ok",
            "openinference.span.kind": "CHAIN",
            "gen_ai.conversation.id": row["id"],
            "ralph.failure.fingerprint": row["fingerprint"],  # the check failed: what the judge compares
        }
        assert row["fingerprint"]
        if number > 1:
            expected["session.previous_id"] = sessions[number - 1]["id"]
        assert it["attributes"] == expected
        assert it["status"] is None  # a lenient step and a check that says "not yet" are no failure

    steps = by_name(spans, "ralph.step")
    assert len(steps) == 2 * 5
    span_of = {}
    for step in steps:
        a = step["attributes"]
        parent = next(s for s in iterations.values() if s["span_id"] == step["parent_id"])
        number = parent["attributes"]["ralph.iteration"]
        span_of[a["ralph.step.name"], number] = step
        assert a["session.id"] == parent["attributes"]["session.id"]
        assert a["ralph.iteration"] == number and a["ralph.attempt"] == 1
        assert (
            a["ralph.step.kind"]
            == {"prep": "before", "agent": "agent", "pid": "after", "lenient": "after", "check": "check"}[
                a["ralph.step.name"]
            ]
        )
        assert isinstance(a["process.exit.code"], int) and isinstance(a["process.pid"], int)
        kind = {"agent": "AGENT", "check": "EVALUATOR"}.get(a["ralph.step.kind"], "CHAIN")
        assert a["openinference.span.kind"] == kind
        if kind == "AGENT":  # a command agent: no provider, model or tokens to tell
            assert {k: v for k, v in a.items() if k.startswith("gen_ai.")} == {
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "spans",
                "gen_ai.conversation.id": a["session.id"]}
        failed = a["ralph.step.name"] in ("lenient", "check")
        assert (step["status"] == 2) is failed
        assert a.get("error.type") == ({"lenient": "5", "check": "1"}.get(a["ralph.step.name"]))
    for number in (1, 2):
        prep, agent, pid = (span_of[name, number]["attributes"] for name in ("prep", "agent", "pid"))
        assert prep["process.command_args"] == ["/bin/sh", "-c", "echo prep $LOOP_SECRET"]
        assert prep["process.executable.name"] == "sh"
        assert pid["process.command_args"] == PID_STEP
        assert pid["process.executable.name"] == os.path.basename(PY)
        log = Path(
            db_rows(
                isolated, f"SELECT log_path FROM steps WHERE name = 'pid' AND session_id = '{sessions[number]['id']}'"
            )[0]["log_path"]
        ).read_text()
        assert f"pid {pid['process.pid']}" in log  # the child's own pid
        assert "process.command_args" not in agent  # an agent's argv may hold the prompt
        assert "input.value" not in agent and "output.value" not in agent
        assert agent["process.executable.name"] == os.path.basename(DUMP_ENV[0])
        assert span_of["lenient", number]["attributes"]["process.exit.code"] == 5

    # Each child's TRACEPARENT is its own step's span; OTEL_RESOURCE_ATTRIBUTES adds the session.
    for name, env in read_dumps(dumps).items():
        step_and_item, number, _attempt = name.rsplit("-", 2)
        step = step_and_item.split("-")[0]
        tp = TRACEPARENT_RE.fullmatch(env["TRACEPARENT"])
        assert tp and tp.groups() == (run["trace_id"], span_of[step, int(number)]["span_id"])
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == f"session.id={sessions[int(number)]['id']}"


def test_no_env_value_or_prompt_reaches_any_attribute(tmp_path: Path, isolated: Path, receiver: Receiver) -> None:
    secrets = ["loop-env-secret-1234", "prompt-secret-9012", "inherited-secret-5678"]
    loop = contract_loop(tmp_path, tmp_path / "dumps")
    result = ralph(
        "run", str(loop), env={"INHERITED_SECRET": "inherited-secret-5678", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    )
    assert result.returncode == 1, result.stderr
    assert "prep loop-env-secret-1234" in next(isolated.glob("logs/run_*/ses_*/prep.log")).read_text()
    traces = (isolated / "traces.jsonl").read_text()
    assert receiver.spans() and receiver.logs() and receiver.metrics()
    for secret in secrets:
        assert secret not in traces
        assert secret.encode() not in receiver.raw()


def _capture_loop(tmp_path: Path, prompt: str, extra: str = "") -> Path:
    return write_loop(tmp_path, f"""
        name: capture
        agent:
          command: "echo done"
          prompt: "{prompt}"
        steps: {{before: [{{name: prep, run: "true"}}]}}
        until: {{max_iterations: 1}}
        {extra}
    """)


@pytest.mark.parametrize("how", ["env", "loop file"])
def test_content_capture_puts_the_prompt_on_the_agent_span(tmp_path: Path, isolated: Path, how: str) -> None:
    from ralph.semconv import CONTENT_LIMIT, TRUNCATED

    prompt = "secret-prompt-" + "x" * (CONTENT_LIMIT + 100)  # longer than what is kept
    env = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"} if how == "env" else {}
    extra = "telemetry: {capture_content: true}" if how == "loop file" else ""
    result = ralph("run", str(_capture_loop(tmp_path, prompt, extra)), env=env)
    assert result.returncode == 0, result.stderr
    spans = file_spans(isolated / "traces.jsonl")
    (agent,) = [s for s in by_name(spans, "ralph.step") if s["attributes"]["ralph.step.kind"] == "agent"]
    assert agent["attributes"]["input.value"] == prompt[:CONTENT_LIMIT] + TRUNCATED
    assert agent["attributes"]["input.mime_type"] == "text/plain"
    others = [s for s in spans if s is not agent]
    assert others and all("secret-prompt" not in json.dumps(s) for s in others)


def test_the_capture_variable_wins_over_the_loop_file(tmp_path: Path, isolated: Path) -> None:
    loop = _capture_loop(tmp_path, "secret-prompt-1", "telemetry: {capture_content: true}")
    result = ralph("run", str(loop), env={"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false"})
    assert result.returncode == 0, result.stderr
    assert len(file_spans(isolated / "traces.jsonl")) == 4
    assert "secret-prompt-1" not in (isolated / "traces.jsonl").read_text()


def test_inbound_traceparent_makes_the_run_its_child(tmp_path: Path, isolated: Path) -> None:
    dumps = tmp_path / "dumps"
    loop = write_loop(
        tmp_path,
        f"""
        name: nested
        env: {{ENV_DUMP_DIR: "{dumps}"}}
        agent: {{command: {yaml_list(DUMP_ENV)}}}
        until: {{max_iterations: 1}}
    """,
    )
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    result = ralph(
        "run",
        str(loop),
        env={
            "TRACEPARENT": f"00-{trace_id}-{parent}-01",
            "TRACESTATE": "ci=pipeline7",
            "OTEL_RESOURCE_ATTRIBUTES": "team=core,session.id=ses_outer",
        },
    )
    assert result.returncode == 0, result.stderr
    spans = file_spans(isolated / "traces.jsonl")
    (run,) = by_name(spans, "ralph.run")
    assert (run["trace_id"], run["parent_id"]) == (trace_id, parent)
    assert {s["trace_id"] for s in spans} == {trace_id}
    (step,) = by_name(spans, "ralph.step")
    env = read_dumps(dumps)["agent---1-1"]
    assert env["TRACEPARENT"] == f"00-{trace_id}-{step['span_id']}-01"
    assert env["TRACESTATE"] == "ci=pipeline7"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == f"team=core,session.id={step['attributes']['session.id']}"


def test_the_example_child_span_lands_under_its_step(tmp_path: Path, isolated: Path) -> None:
    child_file = tmp_path / "child-traces.jsonl"
    loop = write_loop(
        tmp_path,
        f"""
        name: child
        agent: {{command: {yaml_list([PY, OTEL_CHILD])}, prompt: "do it"}}
        steps:
          after: [{{name: also, run: {yaml_list([PY, OTEL_CHILD])}}}]
        until: {{max_iterations: 2}}
    """,
    )
    result = ralph(
        "run", str(loop), env={"CHILD_TRACES_FILE": str(child_file), "OTEL_RESOURCE_ATTRIBUTES": "team=core"}
    )
    assert result.returncode == 0, result.stderr
    ours = file_spans(isolated / "traces.jsonl")
    theirs = file_spans(child_file)
    assert len(theirs) == 4 and {s["name"] for s in theirs} == {"otel-child.work"}
    steps = {s["span_id"]: s for s in by_name(ours, "ralph.step")}
    (run,) = by_name(ours, "ralph.run")
    for child in theirs:
        step = steps[child["parent_id"]]
        assert child["trace_id"] == run["trace_id"]
        assert child["attributes"]["ralph.step.name"] == step["attributes"]["ralph.step.name"]
        assert child["attributes"]["session.id"] == step["attributes"]["session.id"]
        assert child["resource"]["session.id"] == step["attributes"]["session.id"]
        assert child["resource"]["team"] == "core"
        assert child["resource"]["service.name"] == "otel-child"
    assert {s["parent_id"] for s in theirs} == set(steps)  # one child span under every step


def test_sdk_disabled_or_telemetry_off_makes_no_spans(tmp_path: Path, isolated: Path) -> None:
    dumps = tmp_path / "dumps"
    loop = write_loop(
        tmp_path,
        f"""
        name: quiet
        env: {{ENV_DUMP_DIR: "{dumps}"}}
        agent: {{command: {yaml_list(DUMP_ENV)}}}
        until: {{max_iterations: 1}}
    """,
    )
    inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    result = ralph("run", str(loop), env={"OTEL_SDK_DISABLED": "true", "TRACEPARENT": inbound})
    assert result.returncode == 0, result.stderr
    assert not (isolated / "traces.jsonl").exists()
    assert read_dumps(dumps)["agent---1-1"]["TRACEPARENT"] == inbound  # handed on untouched
    assert all(r["trace_id"] is None for r in db_rows(isolated, "SELECT trace_id FROM sessions"))

    loop.write_text(loop.read_text() + "telemetry: {enabled: false}\n")
    assert ralph("run", str(loop)).returncode == 0
    assert not (isolated / "traces.jsonl").exists()
    loop.write_text(loop.read_text().replace("enabled: false", "file: false"))
    assert ralph("run", str(loop)).returncode == 0
    assert not (isolated / "traces.jsonl").exists()


def test_otlp_export_of_spans_logs_and_metrics_with_exemplars(
    tmp_path: Path, isolated: Path, receiver: Receiver
) -> None:
    loop = contract_loop(tmp_path, tmp_path / "dumps")
    result = ralph("run", str(loop), env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
    assert result.returncode == 1, result.stderr
    assert not warnings_in(result.stderr)
    on_file = {s["span_id"]: s for s in file_spans(isolated / "traces.jsonl")}
    spans = receiver.spans()
    assert {s["span_id"]: (s["name"], s["parent_id"], s["attributes"]) for s in spans} == {
        k: (s["name"], s["parent_id"], s["attributes"]) for k, s in on_file.items()
    }
    (run,) = by_name(spans, "ralph.run")
    iteration_spans = {s["span_id"]: s for s in by_name(spans, "ralph.iteration")}
    session_ids = {s["attributes"]["session.id"] for s in iteration_spans.values()}

    # Logs: the same records as ralph.jsonl, with session.id and the trace context of their span.
    jsonl = [json.loads(line) for line in next((isolated / "logs").glob("run_*/ralph.jsonl")).read_text().splitlines()]
    logs = receiver.logs()
    assert [(r["body"], r["span_id"]) for r in logs] == [(r["message"], r["span_id"]) for r in jsonl]
    for record, line in zip(logs, jsonl, strict=True):
        assert record["trace_id"] == run["trace_id"] == line["trace_id"]
        if line["session_id"]:
            assert record["attributes"]["session.id"] == line["session_id"]
            assert record["attributes"]["ralph.iteration"] == line["iteration"]
        else:
            assert "session.id" not in record["attributes"]
        assert record["attributes"]["ralph.run_id"] == line["run_id"]
    assert {r["attributes"].get("session.id") for r in logs} - {None} == session_ids

    # Metrics: by loop and outcome, never by session; exemplars point at the iteration spans.
    metrics = receiver.metrics()
    iterations = metrics["ralph.iterations"]
    assert [(_pb_attrs(p.attributes), p.as_int) for p in iterations] == [
        ({"ralph.loop": "spans", "ralph.outcome": "ok"}, 2)
    ]
    exemplars = [e for p in iterations for e in p.exemplars]
    assert exemplars and all(e.trace_id.hex() == run["trace_id"] for e in exemplars)
    assert {e.span_id.hex() for e in exemplars} <= set(iteration_spans)
    (duration,) = metrics["ralph.iteration.duration"]
    assert duration.count == 2 and duration.sum > 0
    assert {e.span_id.hex() for e in duration.exemplars} <= set(iteration_spans) and duration.exemplars
    step_points = {_pb_attrs(p.attributes)["ralph.step.name"]: p for p in metrics["ralph.step.duration"]}
    assert sorted(step_points) == ["agent", "check", "lenient", "pid", "prep"]
    assert _pb_attrs(step_points["lenient"].attributes) == {
        "ralph.loop": "spans",
        "ralph.outcome": "failed",
        "ralph.step.kind": "after",
        "ralph.step.name": "lenient",
    }
    step_span_ids = {s["span_id"] for s in by_name(spans, "ralph.step")}
    assert all(e.span_id.hex() in step_span_ids for p in step_points.values() for e in p.exemplars)
    for points in metrics.values():
        for p in points:
            assert not any(key.startswith("session") for key in _pb_attrs(p.attributes))


def test_loop_file_telemetry_section_and_env_precedence(tmp_path: Path, isolated: Path, receiver: Receiver) -> None:
    loop = write_loop(
        tmp_path,
        f"""
        name: configured
        agent: {{command: "true"}}
        until: {{max_iterations: 1}}
        telemetry: {{endpoint: "{receiver.url}", protocol: http/protobuf, metrics_exporter: none,
                     logs_exporter: none, service_name: from-file}}
    """,
    )
    assert ralph("run", str(loop)).returncode == 0
    spans = receiver.spans()
    assert sorted(s["name"] for s in spans) == ["ralph.iteration", "ralph.run", "ralph.step"]
    assert {s["resource"]["service.name"] for s in spans} == {"from-file"}
    assert receiver.bodies["metrics"] == [] and receiver.bodies["logs"] == []

    result = ralph(
        "run",
        str(loop),
        env={"OTEL_METRICS_EXPORTER": "otlp", "OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "from-env"},
    )
    assert result.returncode == 0 and not warnings_in(result.stderr)
    assert len(receiver.spans()) == 3  # no new spans went out
    assert "ralph.iterations" in receiver.metrics()
    assert len(file_spans(isolated / "traces.jsonl")) == 6  # the file gets them regardless


def test_a_traces_only_endpoint_sends_no_metrics_or_logs(tmp_path: Path, receiver: Receiver) -> None:
    loop = write_loop(tmp_path, """
        name: traces-only
        agent: {command: "true"}
        until: {max_iterations: 1}
    """)
    result = ralph("run", str(loop), env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces"})
    assert result.returncode == 0 and not warnings_in(result.stderr)
    assert len(receiver.spans()) == 3
    assert receiver.bodies["metrics"] == [] and receiver.bodies["logs"] == []


def test_a_backend_refusing_metrics_and_logs_costs_one_quiet_line(tmp_path: Path, receiver: Receiver) -> None:
    receiver.refuse = {"metrics", "logs"}  # what Phoenix answers (HTTP 405)
    loop = write_loop(tmp_path, """
        name: phoenix-like
        agent: {command: "echo working"}
        until: {max_iterations: 2}
    """)
    result = ralph("run", str(loop), env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
    assert result.returncode == 0, result.stderr
    assert not warnings_in(result.stderr), result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("ralph: telemetry:")]
    (note,) = notes
    assert re.fullmatch(rf"ralph: telemetry: {re.escape(receiver.url)} takes traces only \(405 to OTLP "
                        r"(metrics|logs)\); metrics and logs it refuses are not sent again in this run", note), note
    assert receiver.bodies["metrics"] and receiver.bodies["logs"]  # both were tried: one line for both
    assert len(receiver.spans()) == 1 + 2 * 2


def test_console_exporter_writes_to_stderr_only(tmp_path: Path) -> None:
    loop = write_loop(
        tmp_path,
        """
        name: console
        agent: {command: "true"}
        until: {max_iterations: 1}
    """,
    )
    result = ralph("run", str(loop), "--json", env={"OTEL_TRACES_EXPORTER": "console"})
    assert result.returncode == 0
    assert '"name": "ralph.iteration"' in result.stderr
    assert all(json.loads(line)["event"] for line in result.stdout.splitlines())


def test_unknown_exporter_is_one_warning_not_a_failure(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(
        tmp_path,
        """
        name: typo
        agent: {command: "true"}
        until: {max_iterations: 1}
    """,
    )
    result = ralph("run", str(loop), env={"OTEL_TRACES_EXPORTER": "zipkin"})
    assert result.returncode == 0
    assert warnings_in(result.stderr) == [
        "ralph: warning: telemetry: unknown traces exporter 'zipkin' (known: otlp, console, none)"
    ]
    assert len(file_spans(isolated / "traces.jsonl")) == 3


class SilentServer:
    """Accepts connections and never answers a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize("backend", ["down", "silent"])
def test_a_dead_or_silent_backend_costs_one_warning(
    tmp_path: Path, isolated: Path, protocol: str, backend: str
) -> None:
    server = SilentServer() if backend == "silent" else None
    port = server.port if server else _closed_port()
    loop = write_loop(
        tmp_path,
        """
        name: unreachable
        agent: {command: "echo working"}
        steps: {after: [{name: note, run: "echo noted"}]}
        until: {max_iterations: 3}
    """,
    )
    try:
        # The generous subprocess timeout is the bound here; benchmarks/ measures the seconds.
        result = ralph(
            "run",
            str(loop),
            timeout=60,
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol},
        )
    finally:
        if server:
            server.close()
    assert result.returncode == 0, result.stderr
    (warning,) = warnings_in(result.stderr)
    assert "telemetry: cannot export" in warning and f"127.0.0.1:{port}" in warning
    others = result.stderr.replace(warning, "")
    assert "Transient error" not in others and "Failed to export" not in others  # the SDK's own lines stay quiet
    assert len(file_spans(isolated / "traces.jsonl")) == 1 + 3 * 3  # the file is complete regardless
    assert [r["status"] for r in db_rows(isolated, "SELECT status FROM sessions")] == ["ok"] * 3


def test_trace_per_session_roots_each_iteration_linked_to_the_run(tmp_path: Path, isolated: Path) -> None:
    dumps = tmp_path / "dumps"
    loop = write_loop(
        tmp_path,
        f"""
        name: per-session
        env: {{ENV_DUMP_DIR: "{dumps}"}}
        agent: {{command: {yaml_list(DUMP_ENV)}}}
        until: {{max_iterations: 2}}
        telemetry: {{trace_per: session}}
    """,
    )
    assert ralph("run", str(loop)).returncode == 0
    spans = file_spans(isolated / "traces.jsonl")
    (run,) = by_name(spans, "ralph.run")
    iterations = by_name(spans, "ralph.iteration")
    assert len({s["trace_id"] for s in spans}) == 3
    sessions = {r["id"]: r for r in db_rows(isolated, "SELECT * FROM sessions")}
    for it in iterations:
        assert it["parent_id"] is None and it["links"] == [run["span_id"]]
        assert sessions[it["attributes"]["session.id"]]["trace_id"] == it["trace_id"]
        (step,) = [s for s in by_name(spans, "ralph.step") if s["parent_id"] == it["span_id"]]
        env = read_dumps(dumps)[f"agent---{it['attributes']['ralph.iteration']}-1"]
        tp = TRACEPARENT_RE.fullmatch(env["TRACEPARENT"])
        assert tp and tp.groups() == (it["trace_id"], step["span_id"])
    shown = ralph("show", run["attributes"]["ralph.run_id"]).stdout
    tree = shown[shown.index("spans:") :].splitlines()[1:]
    assert tree[0].startswith("ralph.run ")
    assert [line.split()[0:2] for line in tree[1:] if line.startswith("  ralph.iteration")] == [
        ["ralph.iteration", "#1"],
        ["ralph.iteration", "#2"],
    ]


def test_metrics_record_cost_and_tokens_by_loop_and_outcome() -> None:
    """The cost path needs an agent that reports one; the metric itself is checked in process."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import use_span

    from ralph.metrics import Metrics

    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    span = TracerProvider().get_tracer("test").start_span("ralph.iteration")
    with use_span(span):
        metrics.span_ended(
            "ralph.iteration",
            {
                "ralph.loop": "l",
                "ralph.outcome": "ok",
                "ralph.cost_usd": 0.25,
                "session.id": "ses_x",
                "ralph.usage.input_tokens": 10,
            },
            1.5,
        )
    span.end()
    data = reader.get_metrics_data()
    found = {m.name: m.data.data_points for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    (cost,) = found["ralph.cost"]
    assert cost.value == 0.25 and dict(cost.attributes) == {"ralph.loop": "l", "ralph.outcome": "ok"}
    assert cost.exemplars[0].span_id == span.get_span_context().span_id
    (tokens,) = found["ralph.tokens"]
    assert tokens.value == 10 and dict(tokens.attributes)["gen_ai.token.type"] == "input"


@pytest.mark.parametrize("args", [["--help"], ["validate", "LOOP"], ["sessions"], ["show", "nothing"]])
def test_commands_that_export_nothing_do_not_import_opentelemetry(tmp_path: Path, args: list[str]) -> None:
    loop = write_loop(tmp_path, 'name: lazy\nagent: {command: "true"}\n')
    imported = imported_modules(*[str(loop) if a == "LOOP" else a for a in args])
    assert not [m for m in imported if m.startswith("opentelemetry")]


def test_a_run_imports_the_trace_exporter_but_not_the_sdk_metrics(tmp_path: Path, isolated: Path) -> None:
    """The control for the test above: the same check sees the import when there is one. The JSON
    file exporter's package would import the SDK's metrics too; a run that exports no metrics
    loads only the trace exporter module (``exporters.load_leaf``)."""
    loop = write_loop(tmp_path, 'name: lazy\nagent: {command: "true"}\nuntil: {max_iterations: 1}\n')
    imported = imported_modules("run", str(loop))
    # (importtime lists what the trace exporter module imports, not the module importlib loads)
    assert "opentelemetry.exporter.otlp.json.common.trace_encoder" in imported
    assert not [m for m in imported if m.startswith(("opentelemetry.sdk.metrics", "tenacity"))]
    assert (isolated / "traces.jsonl").stat().st_size > 0


def test_the_exporter_package_still_imports_after_its_trace_exporter_alone() -> None:
    """``load_leaf`` leaves no stand-in behind: the package imported later runs its ``__init__`` and
    hands out the very class the run used."""
    code = (
        "import sys\n"
        "from ralph.exporters import load_leaf\n"
        "leaf = load_leaf('opentelemetry.exporter.otlp.json.file.trace_exporter', 'FileSpanExporter')\n"
        "assert 'opentelemetry.exporter.otlp.json.file' not in sys.modules\n"
        "from opentelemetry.exporter.otlp.json.file import FileSpanExporter, FileMetricExporter\n"
        "assert FileSpanExporter is leaf, (FileSpanExporter, leaf)\n"
        "print('ok')\n"
    )
    proc = python(code)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
