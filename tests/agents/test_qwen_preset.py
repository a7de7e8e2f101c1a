"""The ``qwen`` preset with the real Qwen Code CLI (npm ``@qwen-code/qwen-code``, pinned in
tests/support/npm.py) against a scripted OpenAI-compatible API on 127.0.0.1
(tests/support/scripted_llm.py), driven by a real ``ralph run``. The model's turns make Qwen's shell
tool (``run_shell_command``) run tests/support/agent_probe.py, which reports the env the tool saw
and the argv and env of the qwen (node) process above it.

Needs npm and node: tests/support/preset_runs.py ``installed`` says when a failed install skips.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from handshake import alive

from helpers import ralph
from tests.support.agent_probe import probes
from tests.support.node_agents import node_probe, qwen_env
from tests.support.npm import ensure_qwen
from tests.support.preset_runs import (
    PROMISE,
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
from tests.support.scripted_llm import ScriptedLLM, offers_no_tools, text

pytestmark = pytest.mark.slow  # node start-up and the CLI's own: seconds per attempt

MODEL = "qwen3-coder-plus"
ARGS = ["--auth-type", "openai"]


@pytest.fixture(scope="session")
def qwen_bin() -> Path:
    return installed(ensure_qwen, "qwen")


def loop_file(tmp_path: Path, until: str, *agent_keys: str) -> Path:
    return preset_loop(tmp_path, until, *agent_keys, preset="qwen", model=MODEL, args=ARGS,
                       prompt_tail=f", then say {PROMISE}")


def test_two_iterations_with_the_real_qwen(qwen_bin: Path, tmp_path: Path, isolated: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    pidfile = tmp_path / "sleeper.pid"
    turns = [node_probe(leave_running(pidfile)), text("One test fixed, more to go."), node_probe(),
             text(f"All tests pass. {PROMISE}")]
    with ScriptedLLM(turns, wire="chat", is_aux=offers_no_tools) as api:
        result = ralph("run", str(loop), env=qwen_env(tmp_path, qwen_bin, api.base_url), timeout=300)
    # The prompt names the promise; only the model's text counts, so iteration 1 did not complete.
    rows = two_iterations(result, api, 4, MODEL)
    assert "Iteration 1 of qwen-test: fix the next failing test" in json.dumps(api.scripted_requests[0]["messages"])
    for number, row in enumerate(rows, 1):
        qwen_id = bound_uuid(row["id"])
        assert row["agent_session_id"] == qwen_id
        assert (row["tokens_in"], row["tokens_out"]) == (200, 40)  # 2 requests x 100 in / 20 out
        assert row["cost_usd"] is None  # Qwen Code reports none
        detail = show(row["id"])
        (step,) = detail["steps"]
        # GenAI / OpenInference on the agent step; the shell call (Claude-shaped tool_use /
        # tool_result, read by the claude parser) a child span of it, without content.
        agent_span = next(s for s in detail["spans"] if s["name"] == "ralph.step")
        a = agent_span["attributes"]
        assert (a["openinference.span.kind"], a["gen_ai.request.model"], a["gen_ai.response.model"]) == (
            "AGENT", MODEL, MODEL)
        assert "gen_ai.provider.name" not in a  # whatever OpenAI-compatible endpoint Qwen Code is given
        stream = events(step["log_path"])
        (use,) = [b for e in stream if e["type"] == "assistant" for b in e["message"]["content"]
                  if b["type"] == "tool_use"]
        (tool,) = [s for s in detail["spans"] if s["name"].startswith("execute_tool")]
        assert tool["name"] == "execute_tool run_shell_command" and tool["status"] == "unset"
        assert tool["parent_id"] == agent_span["span_id"]
        assert tool["attributes"] == tool_attributes("run_shell_command", use["id"], row["id"])
        assert agent_span["start"] <= tool["start"] <= tool["end"] <= agent_span["end"]
        (report,) = probes(Path(step["log_path"]).read_text())
        agent = report["agent"]
        assert agent is not None, report
        at = agent["argv"].index("-o")
        assert agent["argv"][at:] == ["-o", "stream-json", "--yolo", "--session-id", qwen_id, "-m", MODEL, *ARGS]
        assert_session_env(report, row, f"Qwen test #{number}", number)
        # Qwen's own store keeps the session under the derived UUID.
        assert list((tmp_path / "qwen-home" / ".qwen" / "projects").glob(f"*/chats/{qwen_id}.jsonl"))

    assert "qwen session " in result.stdout and "→ run_shell_command: $ " in result.stdout
    assert "[1 agent] One test fixed, more to go." in result.stdout
    assert '{"type"' not in result.stdout
    assert not alive(int(pidfile.read_text()))
    logged = (isolated / "logs" / rows[0]["run_id"] / "ralph.jsonl").read_text()
    assert "process(es) the agent left running" in logged  # ralph ended it, not Qwen


def test_a_retry_resumes_the_same_qwen_session(qwen_bin: Path, tmp_path: Path, isolated: Path) -> None:
    """Attempt 1's agent dies mid-attempt (its own tool SIGKILLs it) after Qwen stored the session;
    a second --session-id is refused ("already in use"), so attempt 2 --resumes it."""
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"',
                     "retry: {attempts: 2, backoff: 0.1s, max_backoff: 0.1s}")
    turns = [node_probe(" --kill"), node_probe(), text(f"Fixed. {PROMISE}")]
    with ScriptedLLM(turns, wire="chat", is_aux=offers_no_tools) as api:
        result = ralph("run", str(loop), env=qwen_env(tmp_path, qwen_bin, api.base_url), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = sessions()
    qwen_id = bound_uuid(row["id"])
    assert row["status"] == "complete" and row["agent_session_id"] == qwen_id
    steps = show(row["id"])["steps"]
    assert [s["attempt"] for s in steps] == [1, 2]
    assert steps[0]["exit_code"] != 0 and steps[1]["exit_code"] == 0
    (report,) = probes(Path(steps[1]["log_path"]).read_text())
    argv = report["agent"]["argv"]
    assert argv[argv.index("--yolo") + 1:argv.index("--yolo") + 3] == ["--resume", qwen_id]
    assert report["tool_env"]["RALPH_ATTEMPT"] == "2"
    # Attempt 1's call never answered (its tool killed the agent): a failed span; attempt 2's is ok.
    tools = sorted((s for s in show(row["id"])["spans"] if s["name"].startswith("execute_tool")),
                   key=lambda s: s["start"])
    assert [(t["parent_id"], t["status"]) for t in tools] == [
        (steps[0]["span_id"], "error"), (steps[1]["span_id"], "unset")]
    assert tools[0]["status_message"] == "the tool failed"  # its error text is content: not captured
    # One conversation: attempt 2's request carries attempt 1's prompt as well as its own.
    assert len(api.scripted_requests) == 3
    assert json.dumps(api.scripted_requests[1]["messages"]).count("Iteration 1 of qwen-test") == 2


def test_an_api_error_is_the_models_text_for_retry_on_output(qwen_bin: Path, tmp_path: Path,
                                                              isolated: Path) -> None:
    """Qwen Code answers an API error with exit 0 and "[API Error: …]" as the reply: it shows, and
    counts as the agent's output (for retry.on_output and output_contains); the exit code says ok."""
    from tests.support.scripted_llm import error

    loop = loop_file(tmp_path, 'output_contains: "API Error: 400"')
    with ScriptedLLM([error(400, "scripted bad request")], wire="chat", is_aux=offers_no_tools) as api:
        result = ralph("run", str(loop), env=qwen_env(tmp_path, qwen_bin, api.base_url), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = sessions()
    assert row["status"] == "complete"
    assert "[API Error: 400 scripted bad request]" in result.stdout
