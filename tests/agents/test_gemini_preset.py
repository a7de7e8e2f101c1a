"""The ``gemini`` preset with the real Gemini CLI (npm ``@google/gemini-cli``, pinned in
tests/support/npm.py) against a scripted Gemini API on 127.0.0.1 (``GOOGLE_GEMINI_BASE_URL``;
tests/support/scripted_llm.py), driven by a real ``ralph run``. The model's turns make Gemini's
shell tool (``run_shell_command``) run tests/support/agent_probe.py, which reports the env the tool
saw and the argv and env of the gemini (node) process above it.

Needs npm and node: tests/support/preset_runs.py ``installed`` says when a failed install skips.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from handshake import alive

from helpers import ralph
from tests.support.agent_probe import PROBE, probes
from tests.support.node_agents import gemini_env, node_probe
from tests.support.npm import ensure_gemini
from tests.support.preset_runs import (
    PROMISE,
    assert_needs_binary,
    assert_session_env,
    bound_uuid,
    events,
    installed,
    leave_running,
    preset_loop,
    sessions,
    show,
    tool_attributes,
    two_iterations,
)
from tests.support.scripted_llm import ScriptedLLM, error, text

pytestmark = pytest.mark.slow  # node start-up and the CLI's own: seconds per attempt

MODEL = "gemini-2.5-flash"


@pytest.fixture(scope="session")
def gemini_bin() -> Path:
    return installed(ensure_gemini, "gemini")


def loop_file(tmp_path: Path, until: str, *agent_keys: str) -> Path:
    return preset_loop(tmp_path, until, *agent_keys, preset="gemini", model=MODEL, prompt_tail=f", then say {PROMISE}")


def test_two_iterations_with_the_real_gemini(gemini_bin: Path, tmp_path: Path, isolated: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    pidfile = tmp_path / "sleeper.pid"
    # Iteration 1's tool leaves a process running in a session of its own: the preset must end it.
    turns = [node_probe(leave_running(pidfile)), text("One test fixed,\nmore to go."),
             node_probe(), text(f"All tests pass. {PROMISE}")]
    with ScriptedLLM(turns, wire="gemini") as api:
        result = ralph("run", str(loop), env=gemini_env(tmp_path, gemini_bin, api.base_url), timeout=300)
    # The prompt reached the model (on stdin), with the model named in the path; one turn per request.
    # The prompt itself names the promise: Gemini echoes it as a user message, which never counts.
    rows = two_iterations(result, api, 4, MODEL)
    assert "Iteration 1 of gemini-test: fix the next failing test" in json.dumps(api.scripted_requests[0]["contents"])
    for number, row in enumerate(rows, 1):
        gemini_id = bound_uuid(row["id"])
        assert row["agent_session_id"] == gemini_id
        assert (row["tokens_in"], row["tokens_out"]) == (200, 40)  # 2 requests x 100 in / 20 out
        assert row["cost_usd"] is None  # Gemini CLI reports none
        detail = show(row["id"])
        (step,) = detail["steps"]
        stream = events(step["log_path"])  # the step log keeps the raw events
        assert stream[0]["type"] == "init" and stream[0]["session_id"] == gemini_id
        assert stream[1]["type"] == "message" and stream[1]["role"] == "user" and PROMISE in stream[1]["content"]
        iteration_span = next(s for s in detail["spans"] if s["name"] == "ralph.iteration")
        assert iteration_span["attributes"]["ralph.agent.session_id"] == gemini_id
        # GenAI / OpenInference on the agent step; Gemini's tool_use / tool_result as a child span
        agent_span = next(s for s in detail["spans"] if s["name"] == "ralph.step")
        a = agent_span["attributes"]
        assert (a["openinference.span.kind"], a["gen_ai.operation.name"], a["gen_ai.provider.name"]) == (
            "AGENT", "invoke_agent", "gcp.gemini")
        assert (a["gen_ai.request.model"], a["gen_ai.response.model"], a["llm.model_name"]) == (MODEL, MODEL, MODEL)
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (200, 40)
        (llm,) = [s for s in detail["spans"] if s["name"] == f"chat {MODEL}"]
        (tool,) = [s for s in detail["spans"] if s["parent_id"] == agent_span["span_id"] and s is not llm]
        (use,) = [e for e in stream if e["type"] == "tool_use"]
        (done,) = [e for e in stream if e["type"] == "tool_result"]
        assert tool["name"] == "execute_tool run_shell_command" and tool["status"] == "unset"
        # no content: that is asked for
        assert tool["attributes"] == tool_attributes("run_shell_command", use["tool_id"], row["id"])
        assert done["tool_id"] == use["tool_id"] and done["status"] == "success"
        assert agent_span["start"] <= tool["start"] <= tool["end"] <= agent_span["end"]
        assert PROBE.name not in json.dumps(detail["spans"])  # the command is content too

        (report,) = probes(Path(step["log_path"]).read_text())
        agent = report["agent"]
        assert agent is not None, report
        at = agent["argv"].index("-o")
        assert agent["argv"][at:] == ["-o", "stream-json", "--skip-trust", "--yolo", "--session-id", gemini_id,
                                      "-m", MODEL]
        assert_session_env(report, row, f"Gemini test #{number}", number)

    # Gemini keeps each session under the derived UUID in its own store.
    chats = list((tmp_path / "gemini-home" / ".gemini" / "tmp").glob("*/chats/session-*.jsonl"))
    assert sorted(json.loads(p.read_text().splitlines()[0])["sessionId"] for p in chats) == sorted(
        bound_uuid(r["id"]) for r in rows)

    # The console shows a readable rendering (deltas joined into lines), not raw JSON.
    assert "→ run_shell_command: $ " in result.stdout
    assert "[1 agent] One test fixed,\n[1 agent] more to go." in result.stdout
    assert '{"type"' not in result.stdout

    # What the tool left running did not outlive the attempt.
    assert not alive(int(pidfile.read_text()))
    logged = (isolated / "logs" / rows[0]["run_id"] / "ralph.jsonl").read_text()
    assert "process(es) the agent left running" in logged


def test_a_retry_resumes_the_same_gemini_session(gemini_bin: Path, tmp_path: Path, isolated: Path) -> None:
    """Attempt 1's first request fails (a 400: Gemini does not retry it itself): Gemini stored the
    session but rolled the prompt back, so it neither resumes it nor takes its UUID again; attempt
    2 starts a session under a UUID of its own (derived from ours and the attempt number). Its
    model ran a tool, then a request failed: attempt 3 --resumes that session."""
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"',
                     "retry: {attempts: 3, backoff: 0.1s, max_backoff: 0.1s}")
    turns = [error(400, "scripted bad request"), node_probe(), error(400, "scripted bad request"), node_probe(),
             text(f"Fixed. {PROMISE}")]
    capture = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}  # tool content in the spans
    with ScriptedLLM(turns, wire="gemini") as api:
        result = ralph("run", str(loop), env={**gemini_env(tmp_path, gemini_bin, api.base_url), **capture},
                       timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = sessions()
    first, second = (bound_uuid(name) for name in (row["id"], f"{row['id']}#2"))
    assert row["status"] == "complete" and row["agent_session_id"] == second
    steps = show(row["id"])["steps"]
    assert [s["attempt"] for s in steps] == [1, 2, 3]
    assert [s["exit_code"] != 0 for s in steps] == [True, True, False]
    assert events(steps[0]["log_path"])[0]["session_id"] == first
    argvs = [probes(Path(s["log_path"]).read_text())[0]["agent"]["argv"] for s in steps[1:]]
    assert [a[a.index("--yolo") + 1:a.index("--yolo") + 3] for a in argvs] == [
        ["--session-id", second], ["--resume", second]]
    assert "gemini: error: " in result.stdout and "scripted bad request" in result.stdout
    # Attempts 2 and 3 ran the tool: each call a child of its attempt's step span, its command and
    # output captured.
    spans = show(row["id"])["spans"]
    tools = sorted((s for s in spans if s["name"].startswith("execute_tool")), key=lambda s: s["start"])
    assert [t["parent_id"] for t in tools] == [steps[1]["span_id"], steps[2]["span_id"]]
    (use,) = [e for e in events(steps[1]["log_path"]) if e["type"] == "tool_use"]
    t = tools[0]["attributes"]
    assert (t["gen_ai.tool.call.id"], json.loads(t["gen_ai.tool.call.arguments"])) == (use["tool_id"], use["parameters"])
    assert t["gen_ai.tool.call.result"].startswith("RALPH-PROBE") and t["output.value"] == t["gen_ai.tool.call.result"]
    # One conversation from attempt 2 on: attempt 3's request carries attempt 2's prompt and tool call.
    assert len(api.scripted_requests) == 5
    resumed = json.dumps(api.scripted_requests[3]["contents"])
    assert resumed.count("Iteration 1 of gemini-test") == 2 and "RALPH-PROBE" in resumed


def test_a_missing_gemini_is_a_usage_error(tmp_path: Path, isolated: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    assert_needs_binary(loop, "gemini", tmp_path, isolated)


# Events as Gemini CLI 0.61.0 printed them (a real run's, the command shortened); the failed
# tool_result is in the shape its source (nonInteractiveCli) writes.
TOOL_EVENTS = [
    '{"type":"init","timestamp":"2026-11-30T02:13:11.423Z","session_id":"e3c252a0-5e9c-5ab2-9472-c8c047ccdd95",'
    '"model":"gemini-2.5-flash"}',
    '{"type":"tool_use","timestamp":"2026-11-30T02:13:11.476Z","tool_name":"run_shell_command",'
    '"tool_id":"run_shell_command__run_shell_command_1796004791451_0","parameters":{"command":"python3 probe.py",'
    '"description":"Run a command","is_background":false}}',
    '{"type":"tool_result","timestamp":"2026-11-30T02:13:11.749Z",'
    '"tool_id":"run_shell_command__run_shell_command_1796004791451_0","status":"success","output":"RALPH-PROBE {}"}',
    '{"type":"tool_use","timestamp":"2026-11-30T02:13:12.000Z","tool_name":"read_file","tool_id":"read_file_2",'
    '"parameters":{"file_path":"missing.py"}}',
    '{"type":"tool_result","timestamp":"2026-11-30T02:13:12.250Z","tool_id":"read_file_2","status":"error",'
    '"error":{"type":"file_not_found","message":"File not found: missing.py"}}',
    '{"type":"tool_use","timestamp":"2026-11-30T02:13:12.500Z","tool_name":"run_shell_command","tool_id":"cut_3",'
    '"parameters":{"command":"sleep 300"}}',
]


def test_the_parser_turns_tool_use_and_tool_result_into_tool_calls_at_their_own_times() -> None:
    from ralph.agents.gemini import GeminiParser

    parser = GeminiParser("fallback")
    shown = [parser.feed(line.encode() + b"\n")[0] for line in TOOL_EVENTS]
    assert shown[2] == "  ← RALPH-PROBE {}" and shown[4] == "  ✗ File not found: missing.py"
    assert parser.model == "gemini-2.5-flash"
    shell, read, cut = parser.finish(at=1796004800.0)
    assert (shell.call_id, shell.name, shell.ok, shell.output, shell.error) == (
        "run_shell_command__run_shell_command_1796004791451_0", "run_shell_command", True, "RALPH-PROBE {}", None)
    assert json.loads(shell.input or "")["command"] == "python3 probe.py"
    assert (shell.start, shell.end) == (1796004791.476, 1796004791.749)  # Gemini's own timestamps
    assert (read.name, read.ok, read.error) == ("read_file", False, "File not found: missing.py")
    assert (cut.call_id, cut.ok, cut.error, cut.end) == ("cut_3", False, "no result", 1796004800.0)  # never answered
