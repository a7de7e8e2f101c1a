"""The ``claude`` preset with the real Claude Code CLI (npm ``@anthropic-ai/claude-code``, pinned in
tests/support/npm.py) against a scripted Anthropic Messages API on 127.0.0.1, driven by a real
``ralph run``. The model's turns make Claude's Bash tool run tests/support/agent_probe.py, which
reports the env the tool saw and the argv and env of the ``claude`` process above it.

Needs npm: tests/support/preset_runs.py ``installed`` says when a failed install skips.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from helpers import ralph
from tests.support import agent_probe
from tests.support.agent_probe import probes
from tests.support.claude import claude_env
from tests.support.npm import ensure_claude
from tests.support.preset_runs import (
    PROMISE,
    assert_a_named_promise_claims_nothing,
    assert_bin_not_executable,
    assert_needs_binary,
    assert_session_env,
    bound_uuid,
    events,
    installed,
    preset_loop,
    sessions,
    show,
    two_iterations,
)
from tests.support.scripted_llm import ScriptedLLM, error, text, tool_use, usage_limit

MODEL = "claude-sonnet-4-5"


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    return installed(ensure_claude, "claude")


@pytest.fixture
def on_path(claude_bin: Path, tmp_path: Path) -> dict[str, str]:
    """PATH with a folder holding `claude` (a link to the installed binary) in front."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "claude").symlink_to(claude_bin)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def probe(claude_bin: Path) -> object:
    return tool_use("Bash", {"command": agent_probe.command(claude_bin), "description": "Report the session env"})


def loop_file(tmp_path: Path, until: str, *agent_keys: str) -> Path:
    return preset_loop(tmp_path, until, *agent_keys, preset="claude", model=MODEL, args=["--allowedTools", "Bash"])


def test_two_iterations_with_the_real_claude(claude_bin: Path, on_path: dict[str, str], tmp_path: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    turns = [probe(claude_bin), text("One test fixed, more to go."),
             probe(claude_bin), text(f"All tests pass. {PROMISE}")]
    capture = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}  # content in the spans, on request
    with ScriptedLLM(turns, wire="anthropic") as api:
        result = ralph("run", str(loop), env={**on_path, **claude_env(tmp_path, api.base_url), **capture})
    # The prompt reached the model (on stdin), with --model; one scripted turn per request; the
    # promise of iteration 2 ended the loop.
    rows = two_iterations(result, api, 4, MODEL)
    first_user = json.dumps(api.scripted_requests[0]["messages"][0])
    assert "Iteration 1 of claude-test: fix the next failing test" in first_user
    for number, row in enumerate(rows, 1):
        claude_id = bound_uuid(row["id"])
        assert row["agent_session_id"] == claude_id
        detail = show(row["id"])
        (step,) = detail["steps"]
        stream = events(step["log_path"])  # the step log keeps the raw events
        assert stream[0]["type"] == "system" and stream[0]["subtype"] == "init"
        assert stream[0]["session_id"] == claude_id
        (final,) = [e for e in stream if e["type"] == "result"]
        assert row["cost_usd"] == pytest.approx(final["total_cost_usd"]) and row["cost_usd"] > 0
        assert (row["tokens_in"], row["tokens_out"]) == (200, 40)  # 2 requests x 100 in / 20 out
        iteration_span = next(s for s in detail["spans"] if s["name"] == "ralph.iteration")
        assert iteration_span["attributes"]["ralph.agent.session_id"] == claude_id
        assert iteration_span["attributes"]["ralph.cost_usd"] == pytest.approx(row["cost_usd"])
        assert iteration_span["attributes"]["ralph.usage.input_tokens"] == 200
        agent_span = next(s for s in detail["spans"] if s["name"] == "ralph.step")
        a = agent_span["attributes"]
        assert (a["openinference.span.kind"], a["gen_ai.operation.name"], a["gen_ai.provider.name"]) == (
            "AGENT", "invoke_agent", "anthropic")
        assert (a["gen_ai.request.model"], a["gen_ai.response.model"], a["llm.model_name"]) == (MODEL, MODEL, MODEL)
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"], a["llm.token_count.total"]) == (
            200, 40, 240)
        assert a["input.value"] == f"Iteration {number} of claude-test: fix the next failing test"
        assert a["output.value"] == ["One test fixed, more to go.", f"All tests pass. {PROMISE}"][number - 1]
        (llm,) = [s for s in detail["spans"] if s["name"] == f"chat {MODEL}"]
        assert llm["parent_id"] == agent_span["span_id"] and llm["attributes"]["llm.token_count.total"] == 240
        assert "input.value" not in llm["attributes"]  # the prompt is the agent's, once
        (tool,) = [s for s in detail["spans"] if s["parent_id"] == agent_span["span_id"] and s is not llm]
        (use,) = [b for e in stream if e["type"] == "assistant" for b in e["message"]["content"]
                  if b["type"] == "tool_use"]
        assert tool["name"] == "execute_tool Bash" and tool["status"] == "unset"
        t = tool["attributes"]
        assert (t["openinference.span.kind"], t["gen_ai.tool.name"], t["gen_ai.tool.call.id"]) == (
            "TOOL", "Bash", use["id"])
        assert json.loads(t["gen_ai.tool.call.arguments"]) == use["input"] and t["input.value"] == json.dumps(
            use["input"]) and t["input.mime_type"] == "application/json"
        assert "RALPH_SESSION_ID" in t["gen_ai.tool.call.result"] and t["output.value"] == t["gen_ai.tool.call.result"]
        assert agent_span["start"] <= tool["start"] <= tool["end"] <= agent_span["end"]

        (report,) = probes(Path(step["log_path"]).read_text())
        agent = report["agent"]
        assert agent["argv"] == [str(tmp_path / "bin" / "claude"), "-p", "--output-format", "stream-json",
                                 "--verbose", "--session-id", claude_id, "--model", MODEL,
                                 "--allowedTools", "Bash"]
        traceparent = f"00-{row['trace_id']}-{step['span_id']}-"  # the agent step's span; flags vary
        assert_session_env(report, row, f"Claude test #{number}", number, traceparent)

    # The console shows a readable rendering, not raw JSON.
    assert "→ Bash: $ " in result.stdout and "One test fixed, more to go." in result.stdout
    assert '{"type"' not in result.stdout


def test_max_cost_usd_stops_the_loop(claude_bin: Path, on_path: dict[str, str], tmp_path: Path) -> None:
    # One request a session, 100 in / 20 out tokens: $0.0006 at claude-sonnet-4-5 prices. The budget
    # runs out in iteration 2, with no success condition ever holding.
    loop = loop_file(tmp_path, "max_cost_usd: 0.001")
    with ScriptedLLM([], wire="anthropic", final_text="Still working.") as api:
        result = ralph("run", str(loop), env={**on_path, **claude_env(tmp_path, api.base_url)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "max_cost_usd" in result.stdout + result.stderr
    rows = sessions()
    assert len(rows) == 2
    assert sum(r["cost_usd"] for r in rows) >= 0.001 > rows[0]["cost_usd"] > 0


def test_a_retry_resumes_the_same_claude_session(claude_bin: Path, on_path: dict[str, str], tmp_path: Path) -> None:
    # Attempt 1 fails on an API error (a 500; claude_env sets CLAUDE_CODE_MAX_RETRIES=0) after Claude Code
    # created the session; a second --session-id with that UUID is refused ("Session ID … is already
    # in use"), so attempt 2 must --resume it.
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"',
                     "retry: {attempts: 2, backoff: 0.1s, max_backoff: 0.1s}")
    turns = [error(500, "scripted overload"), probe(claude_bin), text(f"Fixed. {PROMISE}")]
    with ScriptedLLM(turns, wire="anthropic") as api:
        result = ralph("run", str(loop), env={**on_path, **claude_env(tmp_path, api.base_url)})
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = sessions()
    claude_id = bound_uuid(row["id"])
    assert row["status"] == "complete" and row["agent_session_id"] == claude_id
    steps = show(row["id"])["steps"]
    assert [(s["attempt"], s["exit_code"]) for s in steps] == [(1, 1), (2, 0)]
    (report,) = probes(Path(steps[1]["log_path"]).read_text())
    assert report["agent"]["argv"][5:7] == ["--resume", claude_id]
    assert report["tool_env"]["RALPH_ATTEMPT"] == "2"
    assert "claude: error: API Error: 500 scripted overload" in result.stdout
    # One conversation: the resumed attempt's request carries attempt 1's prompt as well as its own.
    assert len(api.scripted_requests) == 3
    assert json.dumps(api.scripted_requests[1]["messages"]).count("Iteration 1 of claude-test") == 2
    (final,) = [e for e in events(steps[1]["log_path"]) if e["type"] == "result"]
    assert row["cost_usd"] == pytest.approx(final["total_cost_usd"])  # the session's total, counted once


def test_a_rate_limit_pauses_and_resumes_the_same_claude_session(claude_bin: Path, on_path: dict[str, str],
                                                                 tmp_path: Path) -> None:
    # Claude Code reports a 429 as an API error (api_error_status 429, error "rate_limit"); with an
    # API key it reads no reset time, so usage_limit.wait applies. The prompt names the promise.
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"\n          max_consecutive_failures: 1',
                     "usage_limit: {wait: 1s}")
    turns = [usage_limit(int(time.time()) + 1), text(f"Fixed. {PROMISE}")]
    with ScriptedLLM(turns, wire="anthropic") as api:
        result = ralph("run", str(loop), env={**on_path, **claude_env(tmp_path, api.base_url)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\[1 agent\] paused until \d\d:\d\d:\d\d \(usage limit\)$", result.stdout, re.M), result.stdout
    (row,) = sessions()
    claude_id = bound_uuid(row["id"])
    assert row["status"] == "complete" and row["agent_session_id"] == claude_id
    steps = show(row["id"])["steps"]
    assert [(s["attempt"], s["exit_code"]) for s in steps] == [(1, 1), (2, 0)]
    assert '"api_error_status":429' in Path(steps[0]["log_path"]).read_text().replace(" ", "")
    assert len(api.scripted_requests) == 2


def test_a_prompt_naming_the_promise_claims_nothing(claude_bin: Path, on_path: dict[str, str], tmp_path: Path) -> None:
    # The claude CLI's echo of the user message (if any) and the prompt's own lines never count.
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    assert_a_named_promise_claims_nothing(loop, "anthropic", lambda api: {**on_path, **claude_env(tmp_path, api.base_url)})


def test_a_missing_claude_is_a_usage_error(tmp_path: Path, isolated: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    assert_needs_binary(loop, "claude", tmp_path, isolated)

    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"', "bin: ./tools/claude")
    assert_bin_not_executable(loop, "./tools/claude", isolated)


def test_the_parser_pairs_tool_use_with_tool_result_and_fails_an_unanswered_call() -> None:
    from ralph.agents.claude import ClaudeParser, _Recent

    parser = ClaudeParser("uuid", False, _Recent())
    lines = [
        {"type": "system", "subtype": "init", "session_id": "uuid", "model": MODEL},
        {"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "pytest"}}]}},
        {"type": "user", "message": {"content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
             "content": [{"type": "text", "text": "1 failed\nmore"}]}]}},
        {"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "toolu_2", "name": "Edit", "input": {"file_path": "a.py"}}]}},
    ]
    for line in lines:
        parser.feed(json.dumps(line).encode())
    assert parser.model == MODEL
    first, second = parser.finish()
    assert (first.call_id, first.name, first.ok, first.error, first.output) == (
        "toolu_1", "Bash", False, "1 failed …", "1 failed\nmore")
    assert json.loads(first.input or "") == {"command": "pytest"} and first.start <= first.end
    assert (second.call_id, second.name, second.ok, second.error) == ("toolu_2", "Edit", False, "no result")
