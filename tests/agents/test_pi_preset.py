"""The ``pi`` preset with the real pi coding agent (npm ``@mariozechner/pi-coding-agent``, pinned in
tests/support/pi.py) against the scripted OpenAI-compatible server (tests/support/scripted_llm.py,
declared in an isolated ``~/.pi/agent/models.json``), driven by a real ``ralph run``.

Needs npm and node: tests/support/preset_runs.py ``installed`` says when a failed install skips.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from handshake import alive, db_rows, spans

from helpers import ralph, write_loop
from ralph.agents.base import AgentReport
from ralph.agents.pi import PiParser, sessions_dir
from tests.support.pi import ensure_pi, pi_env
from tests.support.preset_runs import (
    agent_step_spans,
    assert_interrupt_ends_tool,
    assert_needs_binary,
    assert_tool_span,
    events,
    installed,
    stored_sessions,
    tool_attributes,
)
from tests.support.scripted_llm import ScriptedLLM, bash, text

MODEL = "scripted/scripted-model"
PROMISE = "<promise>COMPLETE</promise>"
STEP_COST = (100 * 3.0 + 20 * 15.0) / 1_000_000  # pi_env's prices; the server's 100 in / 20 out


@pytest.fixture(scope="session")
def pi_bin() -> Path:
    return installed(ensure_pi, "pi")


@pytest.mark.slow
def test_pi_runs_each_iteration_in_a_pi_session_that_is_ralphs(pi_bin: Path, tmp_path: Path, isolated: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    seen, pidfile = tmp_path / "seen.txt", tmp_path / "sleeper.pid"
    # Iteration 1's first attempt hangs on the model until the agent's timeout ends it: the retry
    # continues the same pi session. Its tool records the session env it saw, quotes the promise
    # (only the model's text counts) and leaves a process running (the preset must end it).
    turns = [
        text("too late", delay=60),
        bash(f'echo "$OPENCODE_SESSION_ID $RALPH_ATTEMPT" >> {seen}; echo "I will say {PROMISE}"; '
             f"sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 &", "Record the session"),
        text("Fixed one test."),
        text(f"All tests pass. {PROMISE}"),
    ]
    loop = write_loop(tmp_path, f"""
        name: pi-bound
        title: "Pi fix #{{iteration}}"
        workdir: work
        agent:
          preset: pi
          bin: {pi_bin}
          model: {MODEL}
          prompt: "-Fix the next failing test (iteration {{iteration}})."
          timeout: 20s
          retry: {{attempts: 2, backoff: 10ms, max_backoff: 10ms}}
        until:
          max_iterations: 4
          output_contains: "{PROMISE}"
        """)
    with ScriptedLLM(turns) as srv:
        result = ralph("run", str(loop), env=pi_env(tmp_path, srv.base_url), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr
    assert "success condition held" in result.stdout

    rows = stored_sessions(isolated)
    assert [r["status"] for r in rows] == ["ok", "complete"]
    steps = db_rows(isolated, "SELECT session_id, attempt, status, log_path FROM steps WHERE name = 'agent' "
                              "ORDER BY id")
    assert [(s["attempt"], s["status"]) for s in steps] == [(1, "timeout"), (2, "ok"), (1, "ok")]
    # The prompt went on stdin, verbatim. (pi writes a new session's messages to its file at the first
    # answer: the attempt that timed out left none for the retry to see; the retry's session is the
    # same, as its header event says below.)
    assert srv.requests[1]["messages"][-1]["content"] == [
        {"type": "text", "text": "-Fix the next failing test (iteration 1)."}]
    assert seen.read_text().splitlines() == [f"{rows[0]['id']} 2"]  # what the shell tool saw

    pi_sessions = tmp_path / "pi-home" / ".pi" / "agent" / "sessions"
    for row, (tokens_in, tokens_out) in zip(rows, [(200, 40), (100, 20)], strict=True):
        assert row["agent_session_id"] == row["id"]
        assert (row["tokens_in"], row["tokens_out"]) == (tokens_in, tokens_out)
        assert row["cost_usd"] == pytest.approx(tokens_in // 100 * STEP_COST)
        # pi's own session file carries our ID, in the folder pi lists the workdir's sessions from
        (stored,) = pi_sessions.glob(f"*/*_{row['id']}.jsonl")
        assert stored.parent.name == "--" + str(workdir).strip("/").replace("/", "-") + "--"
        assert events(str(stored))[0] == {**events(str(stored))[0], "type": "session", "id": row["id"],
                                          "cwd": str(workdir)}
    for step in steps:  # every attempt's first event: the session header with our ID
        assert events(step["log_path"])[0]["id"] == step["session_id"]
    assert "Fixed one test." in result.stdout and "→ bash: $ echo" in result.stdout
    assert '"type"' not in result.stdout and "-Fix the next" not in result.stdout
    assert not alive(int(pidfile.read_text()))

    # GenAI / OpenInference on the agent steps (pi's provider/model split as opencode's); the bash
    # call a child span of the attempt that made it (attempt 2), no content.
    all_spans = spans(isolated)
    agent_spans = agent_step_spans(all_spans)
    retried = agent_spans[(rows[0]["id"], "2")]
    a = retried["attrs"]
    assert (a["openinference.span.kind"], a["gen_ai.provider.name"], a["gen_ai.request.model"],
            a["gen_ai.response.model"]) == ("AGENT", "scripted", "scripted-model", "scripted-model")
    assert (int(a["gen_ai.usage.input_tokens"]), int(a["gen_ai.usage.output_tokens"])) == (200, 40)
    (tool,) = [s for s in all_spans if s["name"].startswith("execute_tool")]
    (start,) = [e for e in events(steps[1]["log_path"]) if e["type"] == "tool_execution_start"]
    assert_tool_span(tool, "bash", retried)
    # no content: that is asked for
    assert tool["attrs"] == tool_attributes("bash", start["toolCallId"], rows[0]["id"])
    assert "RALPH_ATTEMPT" not in (isolated / "traces.jsonl").read_text()  # the command is content


@pytest.mark.slow
def test_an_interrupt_ends_pi_and_what_its_shell_tool_started(pi_bin: Path, tmp_path: Path,
                                                                  isolated: Path) -> None:
    (tmp_path / "work").mkdir()
    loop = write_loop(tmp_path, f"""
        name: pi-interrupt
        workdir: work
        agent: {{preset: pi, bin: {pi_bin}, model: scripted/scripted-model, prompt: "Run the slow tests"}}
        """)
    assert_interrupt_ends_tool(tmp_path, loop, isolated, lambda srv: pi_env(tmp_path, srv.base_url))


def test_a_missing_pi_is_a_usage_error(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, "name: p\nagent: {preset: pi, prompt: hi}\n")
    assert_needs_binary(loop, "pi", tmp_path, isolated)


# Events as pi 0.73.1 printed them, trimmed.
USAGE = {"input": 100, "output": 20, "cacheRead": 30, "cacheWrite": 0, "cost": {"total": 0.0006}}
EVENTS = [
    {"type": "session", "version": 3, "id": "ses_ours", "cwd": "/w"},
    {"type": "message_end", "message": {"role": "user", "content": [{"type": "text", "text": f"say {PROMISE}"}]}},
    {"type": "message_end", "message": {"role": "assistant", "usage": USAGE, "stopReason": "toolUse", "content": [
        {"type": "toolCall", "name": "bash", "arguments": {"command": f"echo '{PROMISE}'"}}]}},
    {"type": "tool_execution_end", "result": {"content": [{"type": "text", "text": f"{PROMISE}\n"}]}, "isError": False},
    {"type": "message_end", "message": {"role": "assistant", "usage": USAGE, "stopReason": "stop",
                                        "content": [{"type": "text", "text": f"Done. {PROMISE}"}]}},
    {"type": "message_end", "message": {"role": "assistant", "content": [], "stopReason": "error",
                                        "errorMessage": "429 rate limit"}},
]


def test_the_parser_counts_the_models_words_tokens_and_cost() -> None:
    parser = PiParser()
    parser.report = AgentReport()
    fed = [parser.feed(json.dumps(e).encode() + b"\n") for e in EVENTS]
    assert [d for d, _ in fed if d is not None] == [
        "pi session ses_ours", f"→ bash: $ echo '{PROMISE}'", f"  ← {PROMISE}", f"Done. {PROMISE}",
        "pi: error: 429 rate limit"]
    assert [t for _, t in fed if t is not None] == [f"Done. {PROMISE}", "429 rate limit"]
    report = parser.report
    assert (report.agent_session_id, report.tokens_in, report.tokens_out) == ("ses_ours", 260, 40)
    assert report.cost_usd == pytest.approx(0.0012)


def test_the_session_file_goes_where_pi_lists_the_workdirs_sessions() -> None:
    work = Path("/srv/app:1/src")
    assert sessions_dir({"HOME": "/h"}, work) == Path("/h/.pi/agent/sessions/--srv-app-1-src--")
    assert sessions_dir({"HOME": "/h", "PI_CODING_AGENT_DIR": "~/pi"}, work) == Path("/h/pi/sessions/--srv-app-1-src--")
    assert sessions_dir({"PI_CODING_AGENT_DIR": "/opt/pi"}, work) == Path("/opt/pi/sessions/--srv-app-1-src--")
    assert sessions_dir({}, work) is None


# Tool events as pi 0.73.1 printed them (a real run's, the command shortened; tool_execution_update
# left out); the failed one in the shape pi-agent-core writes for a tool that threw.
TOOL_EVENTS = [
    '{"type":"message_end","message":{"role":"assistant","content":[{"type":"toolCall","id":"call_89fc0895d9f44f06",'
    '"name":"bash","arguments":{"command":"echo hi","description":"Record the session"}}],"api":"openai-completions",'
    '"provider":"scripted","model":"scripted-model","usage":{"input":100,"output":20,"cacheRead":0,"cacheWrite":0,'
    '"totalTokens":120,"cost":{"total":0.0006}},"stopReason":"toolUse","timestamp":1796004823191}}',
    '{"type":"tool_execution_start","toolCallId":"call_89fc0895d9f44f06","toolName":"bash","args":{"command":"echo hi",'
    '"description":"Record the session"}}',
    '{"type":"tool_execution_end","toolCallId":"call_89fc0895d9f44f06","toolName":"bash","result":{"content":'
    '[{"type":"text","text":"hi\\n"}]},"isError":false}',
    '{"type":"tool_execution_start","toolCallId":"call_2","toolName":"read","args":{"path":"missing.py"}}',
    '{"type":"tool_execution_end","toolCallId":"call_2","toolName":"read","result":{"content":[{"type":"text",'
    '"text":"ENOENT: no such file or directory"}],"details":{}},"isError":true}',
]


def test_the_parser_pairs_tool_execution_events_into_tool_calls() -> None:
    parser = PiParser()
    shown = [parser.feed(line.encode() + b"\n")[0] for line in TOOL_EVENTS]
    assert shown == ["→ bash: $ echo hi", None, "  ← hi", None, "  ✗ ENOENT: no such file or directory"]
    assert parser.model == "scripted-model"
    done, failed = parser.finish()
    assert (done.call_id, done.name, done.ok, done.output, done.error) == (
        "call_89fc0895d9f44f06", "bash", True, "hi\n", None)
    assert json.loads(done.input or "") == {"command": "echo hi", "description": "Record the session"}
    assert done.start <= done.end
    assert (failed.call_id, failed.name, failed.ok, failed.error) == (
        "call_2", "read", False, "ENOENT: no such file or directory")


def test_pis_provider_and_model() -> None:
    from ralph.agents.pi import PRESET

    assert PRESET.model_info("google/gemini-2.5-pro") == ("gcp.gemini", "gemini-2.5-pro")
    assert PRESET.model_info("anthropic/claude-sonnet-4-5") == ("anthropic", "claude-sonnet-4-5")
    assert PRESET.model_info("sonnet") == (None, "sonnet")  # pi finds the provider itself
    assert PRESET.model_info(None) == (None, None)
