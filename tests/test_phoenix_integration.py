"""A real ``ralph run`` exporting to a real Arize Phoenix, read back through Phoenix's REST API: the
span tree, ``session.id`` on every iteration and step span, the sessions Phoenix lists, and the
example child's own span under its step (see docs/phoenix-notes.md for how Phoenix groups sessions).

Phoenix lives in its own venv (``scripts/install-phoenix.sh``). Without it these tests skip, except
under CI (env ``CI`` set), where they fail; so does a Phoenix that cannot start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gitrepo import drop_session_refs

from helpers import PY, ROOT, ralph, write_loop, yaml_list
from tests.support.opencode import OpencodeUnavailable, ensure_opencode, opencode_env, parse_events
from tests.support.phoenix import PhoenixServer, find_phoenix
from tests.support.preset_runs import installed
from tests.support.scripted_llm import ScriptedLLM, bash, text

pytestmark = [pytest.mark.phoenix, pytest.mark.slow]

OTEL_CHILD = str(ROOT / "examples" / "otel-child.py")
ITERATIONS = 3


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixServer]:
    if find_phoenix() is None:
        message = (
            "Arize Phoenix is not installed: run scripts/install-phoenix.sh "
            "(or point RALPH_PHOENIX_BIN at a `phoenix` executable)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PhoenixServer(tmp_path_factory.mktemp("phoenix"))
    with pytest.MonkeyPatch.context() as mp:  # a server outliving one test must not carry its marker
        mp.delenv("RALPH_TEST_MARK", raising=False)
        server.start()  # a PhoenixError here errors every test of the module: a failure, never a skip
    try:
        yield server
    finally:
        server.stop()


def _run(
    tmp_path: Path, phoenix: PhoenixServer, project: str, telemetry: str = "", extra_env: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """A real run of ITERATIONS sessions whose agent is the example OTel child; returns the run's row,
    its sessions (iteration order) and ralph's stderr."""
    loop = write_loop(
        tmp_path,
        f"""
        name: phoenix-{project}
        title: "Phoenix #{{iteration}}"
        agent:
          command: {yaml_list([PY, OTEL_CHILD])}
          prompt: "trace me"
        steps:
          before: [{{name: prep, run: "echo preparing"}}]
        until: {{max_iterations: {ITERATIONS}}}
        {telemetry}
    """,
    )
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.base_url,  # ralph's spans and the child's alike
        "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}",
        **(extra_env or {}),
    }
    result = ralph("run", str(loop), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    sessions = sorted(json.loads(ralph("sessions", "--json").stdout), key=lambda s: s["iteration"])
    assert len(sessions) == ITERATIONS
    run = json.loads(ralph("show", sessions[0]["run_id"], "--json").stdout)
    return run, sessions, result.stderr


def _check_session_subtree(spans: list[dict[str, Any]], iteration: dict[str, Any], session: dict[str, Any]) -> None:
    """An iteration span, its two step spans and the child's span under the agent step."""
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        by_parent.setdefault(s["parent_id"], []).append(s)
    assert iteration["attributes"]["session.id"] == session["id"]
    assert iteration["attributes"]["session.title"] == session["title"]
    assert iteration["context"]["span_id"] == session["span_id"]
    steps = {s["attributes"]["ralph.step.name"]: s for s in by_parent[iteration["context"]["span_id"]]}
    assert sorted(steps) == ["agent", "prep"]
    for step in steps.values():
        assert step["name"] == "ralph.step"
        assert step["attributes"]["session.id"] == session["id"]
        assert step["attributes"]["process.exit.code"] == 0
        assert isinstance(step["attributes"]["process.pid"], int)
    (child,) = by_parent[steps["agent"]["context"]["span_id"]]
    assert child["name"] == "otel-child.work"
    assert child["attributes"]["session.id"] == session["id"]
    assert child["attributes"]["ralph.step.name"] == "agent"
    assert not by_parent.get(steps["prep"]["context"]["span_id"])


def test_a_run_is_one_trace_in_phoenix_with_every_session_labelled(tmp_path: Path, phoenix: PhoenixServer) -> None:
    project = "ralph-run-trace"
    run, sessions, stderr = _run(
        tmp_path, phoenix, project, extra_env={"OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    )
    assert "warning" not in stderr
    expected = 1 + ITERATIONS * (1 + 2 + 1)  # run; per session: iteration, prep, agent, the child's span
    spans = phoenix.wait_for_spans(expected, project=project, trace_id=run["trace_id"])
    assert len(spans) == expected

    (root,) = [s for s in spans if s["parent_id"] is None]
    assert root["name"] == "ralph.run" and root["context"]["span_id"] == run["span_id"]
    assert root["attributes"]["ralph.outcome"] == "ok" and root["attributes"]["process.exit.code"] == 0
    iterations = sorted(
        (s for s in spans if s["parent_id"] == run["span_id"]), key=lambda s: s["attributes"]["ralph.iteration"]
    )
    assert [s["name"] for s in iterations] == ["ralph.iteration"] * ITERATIONS
    for iteration, session in zip(iterations, sessions, strict=True):
        _check_session_subtree(spans, iteration, session)
    assert "session.previous_id" not in iterations[0]["attributes"]
    assert [s["attributes"]["session.previous_id"] for s in iterations[1:]] == [s["id"] for s in sessions[:-1]]

    # What ralph wrote to traces.jsonl is what Phoenix got (the child's span is the child's own).
    ours = {s["span_id"] for s in run["spans"]}
    assert ours == {s["context"]["span_id"] for s in spans if s["name"] != "otel-child.work"}

    # Phoenix files a whole trace under ONE session (the first session.id it ingests), so a run that
    # is one trace shows as one of its sessions there; every session is still found by its label.
    listed = phoenix.wait_for_sessions(1, project=project)
    assert len(listed) == 1 and listed[0]["session_id"] in {s["id"] for s in sessions}
    assert [t["trace_id"] for t in listed[0]["traces"]] == [run["trace_id"]]
    for session in sessions:
        labelled = phoenix.spans(project, attribute=f"session.id:{session['id']}")
        assert sorted(s["name"] for s in labelled) == ["otel-child.work", "ralph.iteration", "ralph.step", "ralph.step"]


def test_trace_per_session_lists_every_session_in_phoenix(tmp_path: Path, phoenix: PhoenixServer) -> None:
    project = "ralph-session-traces"
    run, sessions, stderr = _run(tmp_path, phoenix, project, telemetry="telemetry: {trace_per: session}")
    # Phoenix takes no OTLP logs or metrics (HTTP 405): one quiet line, no warning; the spans all arrive.
    assert "warning" not in stderr
    (note,) = [line for line in stderr.splitlines() if line.startswith("ralph: telemetry:")]
    assert "405" in note and phoenix.base_url in note and "takes traces only" in note

    listed = phoenix.wait_for_sessions(ITERATIONS, project=project)
    assert sorted(s["session_id"] for s in listed) == sorted(s["id"] for s in sessions)
    assert sorted(phoenix.graphql_session_ids(project)) == sorted(s["id"] for s in sessions)
    traces = {s["session_id"]: [t["trace_id"] for t in s["traces"]] for s in listed}
    for session in sessions:
        assert traces[session["id"]] == [session["trace_id"]]
        spans = phoenix.wait_for_spans(4, project=project, trace_id=session["trace_id"])
        (iteration,) = [s for s in spans if s["parent_id"] is None]  # the iteration roots its trace
        assert iteration["name"] == "ralph.iteration"
        _check_session_subtree(spans, iteration, session)

    (root,) = phoenix.wait_for_spans(1, project=project, trace_id=run["trace_id"])
    assert root["name"] == "ralph.run" and "session.id" not in root["attributes"]
    assert run["trace_id"] not in {s["trace_id"] for s in sessions}


def test_the_readme_phoenix_example_runs_clean(tmp_path: Path, isolated: Path, phoenix: PhoenixServer) -> None:
    """README: `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:6006 ralph run loops/demo.yaml`."""
    result = ralph("run", str(ROOT / "loops" / "demo.yaml"), env={"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.base_url})
    drop_session_refs(ROOT, isolated)  # the demo ran in this checkout: leave no snapshot refs in it
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    assert len([line for line in result.stderr.splitlines() if "405" in line]) == 1  # the one quiet line
    sessions = json.loads(ralph("sessions", "--json").stdout)
    run = json.loads(ralph("show", sessions[0]["run_id"], "--json").stdout)
    spans = phoenix.wait_for_spans(len(run["spans"]), trace_id=run["trace_id"])
    kinds = {(s["name"], s["attributes"].get("ralph.step.kind")): s["span_kind"] for s in spans}
    assert kinds == {("ralph.run", None): "CHAIN", ("ralph.iteration", None): "CHAIN",
                     ("ralph.step", "before"): "CHAIN", ("ralph.step", "agent"): "AGENT",
                     ("ralph.step", "after"): "CHAIN"}
    # Phoenix takes gen_ai.conversation.id as session.id on every iteration and agent span.
    for s in spans:
        if s["name"] == "ralph.iteration" or s["attributes"].get("ralph.step.kind") == "agent":
            assert s["attributes"]["session.id"] in {x["id"] for x in sessions}


@pytest.fixture(scope="module")
def opencode_bin() -> Path:
    return installed(ensure_opencode, "opencode", OpencodeUnavailable)


@pytest.mark.opencode
def test_a_real_opencode_loop_in_phoenix_kinds_tokens_tools_and_sessions(
    tmp_path: Path, phoenix: PhoenixServer, opencode_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("OPENCODE_"):
            monkeypatch.delenv(name)
    project = "ralph-opencode"
    (tmp_path / "work").mkdir()
    loop = write_loop(tmp_path, """
        name: oc-phoenix
        title: "Fix tests #{iteration}"
        workdir: work
        agent:
          preset: opencode
          model: scripted/scripted-model
          prompt: "Fix the next failing test (iteration {iteration})"
        until:
          max_iterations: 2
          output_contains: "<promise>COMPLETE</promise>"
        telemetry: {trace_per: session}
        """)
    turns = [bash("echo ran-the-tests", "Run the tests"), text("Fixed one."),
             bash("echo ran-again; exit 4", "Run the tests"), text("All pass. <promise>COMPLETE</promise>")]
    with ScriptedLLM(turns) as srv:
        env = {**opencode_env(tmp_path, srv.base_url, "scripted/scripted-model"),
               "PATH": f"{opencode_bin.parent}{os.pathsep}{os.environ['PATH']}",
               "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.base_url,
               "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}"}
        result = ralph("run", str(loop), env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr
    sessions = sorted(json.loads(ralph("sessions", "--json").stdout), key=lambda s: s["iteration"])
    assert len(sessions) == 2

    listed = {s["session_id"]: s for s in phoenix.wait_for_sessions(2, project=project)}
    assert sorted(listed) == sorted(s["id"] for s in sessions)
    for number, session in enumerate(sessions, 1):
        spans = phoenix.wait_for_spans(4, project=project, trace_id=session["trace_id"])  # iteration, agent, llm, tool
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for s in spans:
            by_kind.setdefault(s["span_kind"], []).append(s)
        assert sorted(by_kind) == ["AGENT", "CHAIN", "LLM", "TOOL"]
        (iteration,), (agent,), (llm,), (tool,) = by_kind["CHAIN"], by_kind["AGENT"], by_kind["LLM"], by_kind["TOOL"]
        assert llm["name"] == "chat scripted-model" and llm["parent_id"] == agent["context"]["span_id"]
        assert iteration["name"] == "ralph.iteration" and agent["parent_id"] == iteration["context"]["span_id"]
        assert tool["parent_id"] == agent["context"]["span_id"]
        a = agent["attributes"]
        assert a["session.id"] == session["id"] and a["gen_ai.agent.name"] == "oc-phoenix"
        assert a["llm.model_name"] == "scripted-model" and a["llm.provider"] == "scripted"
        assert (a["llm.token_count.prompt"], a["llm.token_count.completion"], a["llm.token_count.total"]) == (
            200, 40, 240)
        assert "input.value" not in a and "output.value" not in a  # content only on request
        t = tool["attributes"]
        assert tool["name"] == "execute_tool bash" and t["tool.name"] == "bash"
        log = Path(json.loads(ralph("show", session["id"], "--json").stdout)["steps"][0]["log_path"]).read_text()
        (part,) = [e["part"] for e in parse_events(log) if e["type"] == "tool_use"]
        assert t["gen_ai.tool.call.id"] == part["callID"]
        assert tool["status_code"] == ("UNSET" if number == 1 else "ERROR")  # `exit 4` failed
        # Phoenix sums the LLM spans' tokens for a session (the agent's, counted once).
        assert phoenix.get_json(f"/v1/sessions/{session['id']}")["data"]["token_count_total"] == 240
    assert "ran-the-tests" not in json.dumps(phoenix.spans(project))
