"""The ``copilot`` preset with the real GitHub Copilot CLI (npm ``@github/copilot``, pinned in
tests/support/copilot.py) in offline mode against the scripted OpenAI-compatible server
(tests/support/scripted_llm.py), driven by a real ``ralph run``.

Needs npm: tests/support/preset_runs.py ``installed`` says when a failed install skips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from handshake import alive, db_rows, spans

from helpers import ralph, write_loop
from ralph.agents.base import AgentReport
from ralph.agents.copilot import CopilotParser, copilot_session_id, last_run_usage
from tests.support.copilot import copilot_env, ensure_copilot
from tests.support.preset_runs import (
    agent_step_spans,
    assert_interrupt_ends_tool,
    assert_needs_binary,
    assert_tool_span,
    installed,
    stored_sessions,
    tool_attributes,
)
from tests.support.scripted_llm import ScriptedLLM, bash, error, text

MODEL = "scripted-model"
PROMISE = "<promise>COMPLETE</promise>"


@pytest.fixture(scope="session")
def copilot_bin() -> Path:
    return installed(ensure_copilot, "copilot")


@pytest.mark.slow
def test_copilot_runs_each_iteration_in_a_session_bound_to_ralphs(copilot_bin: Path, tmp_path: Path,
                                                                  isolated: Path) -> None:
    (tmp_path / "work").mkdir()
    seen, pidfile = tmp_path / "seen.txt", tmp_path / "sleeper.pid"
    # Iteration 1's first attempt meets an API error: the retry continues the same Copilot session.
    # Its tool records the session env it saw, quotes the promise (only the model's text counts) and
    # leaves a process running (the preset must end it).
    turns = [
        error(400, "scripted bad request"),
        bash(f'echo "$OPENCODE_SESSION_ID $RALPH_ATTEMPT" >> {seen}; echo "I will say {PROMISE}"; '
             f"(sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 &)", "Record the session"),
        text("Fixed one test."),
        bash("echo failing-command; exit 3", "Run the tests"),  # iteration 2: a command that fails
        text(f"All tests pass. {PROMISE}"),
    ]
    loop = write_loop(tmp_path, f"""
        name: copilot-bound
        title: "Copilot fix #{{iteration}}"
        workdir: work
        agent:
          preset: copilot
          bin: {copilot_bin}
          model: {MODEL}
          prompt: "-Fix the next failing test (iteration {{iteration}})."
          timeout: 5m
          retry: {{attempts: 2, backoff: 10ms, max_backoff: 10ms}}
        until:
          max_iterations: 4
          output_contains: "{PROMISE}"
        """)
    with ScriptedLLM(turns) as srv:
        env = copilot_env(tmp_path, srv.base_url, "another-model")
        result = ralph("run", str(loop), env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success condition held" in result.stdout

    rows = stored_sessions(isolated)
    assert [r["status"] for r in rows] == ["ok", "complete"]
    assert {r["model"] for r in srv.requests} == {MODEL}  # --model over $COPILOT_MODEL
    # The prompt went on stdin, verbatim (a leading "-" is no option); the retry continued the
    # session: attempt 1's prompt is in its request as well as its own.
    assert json.dumps(srv.requests[1]["messages"]).count("-Fix the next failing test (iteration 1).") == 2
    steps = db_rows(isolated, "SELECT attempt, exit_code FROM steps WHERE name = 'agent' ORDER BY id")
    assert [(s["attempt"], s["exit_code"]) for s in steps] == [(1, 1), (2, 0), (1, 0)]
    assert "copilot: error: 400 scripted bad request" in result.stdout

    assert seen.read_text().splitlines() == [f"{rows[0]['id']} 2"]  # the shell tool saw our session
    for row, tokens in zip(rows, [(200, 40), (200, 40)], strict=True):
        copilot_id = copilot_session_id(row["id"])
        assert row["agent_session_id"] == copilot_id
        assert (row["tokens_in"], row["tokens_out"]) == tokens  # the failed call reported none
        assert row["cost_usd"] is None  # Copilot counts premium requests, not dollars
        # Copilot's own session store has it under that UUID
        assert (tmp_path / "copilot-home" / ".copilot" / "session-state" / copilot_id / "events.jsonl").is_file()
    assert rows[0]["agent_session_id"] != rows[1]["agent_session_id"]
    # the console shows the model's words and its tool calls, not JSON, and not the echoed prompt
    assert "Fixed one test." in result.stdout and "→ bash: $ echo" in result.stdout
    assert '"type"' not in result.stdout and "-Fix the next" not in result.stdout
    assert not alive(int(pidfile.read_text()))

    # GenAI / OpenInference on the agent steps, tokens included (read from Copilot's log at its
    # result event); the bash call a child span of the attempt that made it (attempt 2), no content.
    all_spans = spans(isolated)
    agent_spans = agent_step_spans(all_spans)
    retried = agent_spans[(rows[0]["id"], "2")]
    a = retried["attrs"]
    assert (a["openinference.span.kind"], a["gen_ai.request.model"], a["gen_ai.response.model"]) == (
        "AGENT", MODEL, MODEL)
    assert (int(a["gen_ai.usage.input_tokens"]), int(a["gen_ai.usage.output_tokens"])) == (200, 40)
    assert "gen_ai.usage.input_tokens" not in agent_spans[(rows[0]["id"], "1")]["attrs"]  # the failed call
    tool, failing = sorted((s for s in all_spans if s["name"].startswith("execute_tool")),
                           key=lambda s: int(s["startTimeUnixNano"]))
    log = (isolated / "logs" / rows[0]["run_id"] / rows[0]["id"] / "agent.attempt2.log").read_text()
    (start,) = [e["data"] for e in map(json.loads, log.splitlines()) if e["type"] == "tool.execution_start"]
    # iteration 2's `exit 3`: a failed call (Copilot says success, the shell's exit code says no)
    assert failing["parentSpanId"] == agent_spans[(rows[1]["id"], "1")]["spanId"]
    assert failing["status"]["code"] in (2, "STATUS_CODE_ERROR") and failing["status"]["message"] == "the tool failed"
    assert_tool_span(tool, "bash", retried)
    # no content: that is asked for
    assert tool["attrs"] == tool_attributes("bash", start["toolCallId"], rows[0]["id"])
    for words in ("RALPH_ATTEMPT", "failing-command"):  # commands and their output are content
        assert words not in (isolated / "traces.jsonl").read_text()


@pytest.mark.slow
def test_an_interrupt_ends_copilot_and_what_its_shell_tool_started(copilot_bin: Path, tmp_path: Path,
                                                                  isolated: Path) -> None:
    (tmp_path / "work").mkdir()
    loop = write_loop(tmp_path, f"""
        name: copilot-interrupt
        workdir: work
        agent: {{preset: copilot, bin: {copilot_bin}, prompt: "Run the slow tests"}}
        """)
    assert_interrupt_ends_tool(tmp_path, loop, isolated, lambda srv: copilot_env(tmp_path, srv.base_url))


def test_a_missing_copilot_is_a_usage_error(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, "name: c\nagent: {preset: copilot, prompt: hi}\n")
    assert_needs_binary(loop, "copilot", tmp_path, isolated)


# Events as Copilot CLI 1.0.102 printed them, trimmed.
EVENTS = [
    {"type": "user.message", "data": {"content": f"Say {PROMISE} when done"}},
    {"type": "assistant.message_delta", "ephemeral": True, "data": {"deltaContent": "Look"}},
    {"type": "assistant.message", "data": {"content": "Looking.", "toolRequests": [
        {"name": "bash", "arguments": {"command": f"echo '{PROMISE}'\nmore", "description": "d"}}]}},
    {"type": "tool.execution_complete", "data": {"success": True, "result": {"content": f"{PROMISE}\n"}}},
    {"type": "session.error", "data": {"errorType": "query", "message": "429 rate limit", "statusCode": 429}},
    {"type": "assistant.message", "data": {"content": f"Done. {PROMISE}", "toolRequests": []}},
    {"type": "result", "sessionId": "0c0f7a3e-0000-4000-8000-000000000000", "exitCode": 0},
]


def test_the_parser_counts_the_models_words_only() -> None:
    parser = CopilotParser("fallback")
    parser.report = AgentReport()
    fed = [parser.feed(json.dumps(e).encode() + b"\n") for e in EVENTS]
    assert [d for d, _ in fed if d is not None] == [
        f"Looking.\n→ bash: $ echo '{PROMISE}' …",
        f"  ← {PROMISE}",
        "copilot: error: 429 rate limit",
        f"Done. {PROMISE}",
        "copilot: done · exit 0 · session 0c0f7a3e-0000-4000-8000-000000000000",
    ]
    assert [t for _, t in fed if t is not None] == ["Looking.", "429 rate limit", f"Done. {PROMISE}"]
    assert parser.report.agent_session_id == "0c0f7a3e-0000-4000-8000-000000000000"
    assert parser.feed(b"plain stderr line\n") == ("plain stderr line", None)


def test_tokens_are_those_of_the_last_process_in_the_session_log(tmp_path: Path) -> None:
    def usage(n: int) -> dict[str, Any]:
        return {"type": "session.usage_record", "data": {"usage": {"inputTokens": n, "outputTokens": n // 10}}}
    log = tmp_path / "events.jsonl"
    lines = [{"type": "session.start"}, usage(500), {"type": "session.shutdown"},
             {"type": "session.resume"}, usage(100), {"type": "tool.execution_complete"}, usage(300)]
    log.write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"type": "session.usage_rec')  # cut short
    assert last_run_usage(log) == (400, 40)
    assert last_run_usage(tmp_path / "missing.jsonl") == (None, None)


# Tool events as Copilot CLI 1.0.102 printed them (real runs', trimmed: the first command shortened,
# telemetry left out). A command exiting 3 is a "success" with the shell's exit code beside it.
TOOL_EVENTS = [
    '{"type":"assistant.message","data":{"messageId":"df87","model":"scripted-model","content":"",'
    '"toolRequests":[{"toolCallId":"call_a69f60b09f394952","name":"bash","arguments":{"command":"echo hi",'
    '"description":"Record the session"},"type":"function"}]},"timestamp":"2026-11-30T02:13:19.684Z"}',
    '{"type":"tool.execution_start","data":{"toolCallId":"call_a69f60b09f394952","toolName":"bash",'
    '"arguments":{"command":"echo hi","description":"Record the session"},"turnId":"0","model":"scripted-model",'
    '"toolTitle":"Running command"},"id":"0f99","timestamp":"2026-11-30T02:13:19.686Z","parentId":"82a1"}',
    '{"type":"tool.execution_complete","data":{"toolCallId":"call_a69f60b09f394952","model":"scripted-model",'
    '"turnId":"0","rte":false,"shellExecution":{"exitCode":0},"success":true,"result":{"content":'
    '"hi\\n<shellId: 0 completed with exit code 0>"}},"id":"231a","timestamp":"2026-11-30T02:13:19.745Z"}',
    '{"type":"tool.execution_start","data":{"toolCallId":"call_e9fd2483c1d64472","toolName":"bash","arguments":'
    '{"command":"echo failing-command; exit 3","description":"Run the tests"}},"timestamp":"2026-11-30T02:13:20.000Z"}',
    '{"type":"tool.execution_complete","data":{"toolCallId":"call_e9fd2483c1d64472","model":"scripted-model",'
    '"turnId":"0","rte":false,"shellExecution":{"exitCode":3},"success":true,"result":{"content":"failing-command\\n'
    '<shellId: 0 completed with exit code 3>"}},"timestamp":"2026-11-30T02:13:20.500Z"}',
]


def test_the_parser_pairs_tool_execution_events_into_tool_calls() -> None:
    parser = CopilotParser("fallback")
    shown = [parser.feed(line.encode() + b"\n")[0] for line in TOOL_EVENTS]
    assert shown[1:] == [None, "  ← hi …", None, "  ✗ failing-command …"]  # the start: shown with the request
    assert parser.model == "scripted-model"
    done, failed = parser.finish()
    assert (done.call_id, done.name, done.ok, done.error) == ("call_a69f60b09f394952", "bash", True, None)
    assert json.loads(done.input or "") == {"command": "echo hi", "description": "Record the session"}
    assert done.output == "hi\n<shellId: 0 completed with exit code 0>"
    assert (done.start, done.end) == (1796004799.686, 1796004799.745)  # Copilot's own timestamps
    assert (failed.call_id, failed.ok, failed.error) == ("call_e9fd2483c1d64472", False, "exit 3")  # its exit code
