"""The ``codex`` preset with the real Codex CLI (npm ``@openai/codex``, pinned in tests/support/npm.py)
against a scripted OpenAI Responses API on 127.0.0.1 (a ``model_provider`` in an isolated
``$CODEX_HOME/config.toml``), driven by a real ``ralph run``. The model's turns make Codex's shell
tool (``exec_command``) run tests/support/agent_probe.py, which reports the env the tool saw and
the argv and env of the ``codex`` process above it.

Needs npm: tests/support/preset_runs.py ``installed`` says when a failed install skips.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from helpers import PY, ralph
from tests.support import agent_probe
from tests.support.agent_probe import PROBE, probes
from tests.support.codex import codex_env
from tests.support.npm import ensure_codex
from tests.support.preset_runs import (
    PROMISE,
    assert_a_named_promise_claims_nothing,
    assert_bin_not_executable,
    assert_needs_binary,
    assert_session_env,
    events,
    installed,
    preset_loop,
    sessions,
    show,
    two_iterations,
)
from tests.support.scripted_llm import ScriptedLLM, error, exec_command, text, usage_limit

MODEL = "scripted-model"
# Codex's default sandbox runs commands in a PID namespace of their own, where the probe cannot see
# the codex process above it; the tests turn it off (the args pass through as given).
ARGS = ["--skip-git-repo-check", "--sandbox", "danger-full-access"]


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    return installed(ensure_codex, "codex")


def probe(codex_bin: Path) -> object:
    return exec_command(agent_probe.command(codex_bin))


def loop_file(tmp_path: Path, until: str, *agent_keys: str) -> Path:
    return preset_loop(tmp_path, until, *agent_keys, preset="codex", model=MODEL, args=ARGS)


def test_two_iterations_with_the_real_codex(codex_bin: Path, tmp_path: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"', f"bin: {codex_bin}")  # agent.bin, not PATH
    turns = [probe(codex_bin), text("One test fixed, more to go."),
             probe(codex_bin), exec_command("echo failing-command; exit 3"), text(f"All tests pass. {PROMISE}")]
    with ScriptedLLM(turns, wire="responses") as api:
        result = ralph("run", str(loop), env=codex_env(tmp_path, api.base_url, "another-model"))
    # The prompt reached the model (on stdin, via "-"), with --model over the config's default; the
    # promise of iteration 2 ended the loop.
    rows = two_iterations(result, api, 5, MODEL)
    assert "Iteration 1 of codex-test: fix the next failing test" in json.dumps(api.scripted_requests[0]["input"])
    threads = set()
    for number, row in enumerate(rows, 1):
        detail = show(row["id"])
        (step,) = detail["steps"]
        stream = events(step["log_path"])  # the step log keeps the raw events
        assert stream[0]["type"] == "thread.started"
        thread = stream[0]["thread_id"]
        threads.add(thread)
        assert row["agent_session_id"] == thread
        requests = 1 + number  # 100 in / 20 out each
        assert (row["tokens_in"], row["tokens_out"]) == (100 * requests, 20 * requests)
        assert row["cost_usd"] is None  # codex does not say
        iteration_span = next(s for s in detail["spans"] if s["name"] == "ralph.iteration")
        assert iteration_span["attributes"]["ralph.agent.session_id"] == thread
        assert iteration_span["attributes"]["ralph.usage.output_tokens"] == 20 * requests
        agent_span = next(s for s in detail["spans"] if s["name"] == "ralph.step")
        a = agent_span["attributes"]
        assert (a["openinference.span.kind"], a["gen_ai.provider.name"], a["gen_ai.request.model"]) == (
            "AGENT", "openai", MODEL)
        assert a["gen_ai.usage.output_tokens"] == a["llm.token_count.completion"] == 20 * requests
        assert "input.value" not in a and "output.value" not in a  # no content unless asked
        (llm,) = [s for s in detail["spans"] if s["name"] == f"chat {MODEL}"]
        assert llm["attributes"]["openinference.span.kind"] == "LLM" and llm["parent_id"] == agent_span["span_id"]
        tools = sorted((s for s in detail["spans"] if s["parent_id"] == agent_span["span_id"] and s is not llm),
                       key=lambda s: s["start"])
        commands = [i for e in stream if e["type"] == "item.completed" for i in [e["item"]]
                    if i["type"] == "command_execution"]
        assert [t["name"] for t in tools] == ["execute_tool shell"] * number
        assert [t["attributes"]["gen_ai.tool.call.id"] for t in tools] == [c["id"] for c in commands]
        assert [t["status"] for t in tools] == ["unset", "error"][:number]  # `exit 3` failed
        assert all(t["attributes"]["openinference.span.kind"] == "TOOL" for t in tools)
        assert all(agent_span["start"] <= t["start"] <= t["end"] <= agent_span["end"] for t in tools)

        (report,) = probes(Path(step["log_path"]).read_text())
        agent = report["agent"]
        assert agent["argv"] == [str(codex_bin), "exec", "--json", "--model", MODEL, *ARGS, "-"]
        traceparent = f"00-{row['trace_id']}-{step['span_id']}-"  # the agent step's span; flags vary
        assert_session_env(report, row, f"Codex test #{number}", number, traceparent)
    assert len(threads) == 2  # a fresh thread per session

    # The console shows a readable rendering, not raw JSON.
    assert f"→ $ /bin/bash -lc '{PY} {PROBE}" in result.stdout and "One test fixed, more to go." in result.stdout
    assert '{"type"' not in result.stdout
    for words in ("failing-command", "fix the next failing test"):  # neither commands nor prompts by default
        assert all(words not in json.dumps(s) for r in rows for s in show(r["id"])["spans"])


def test_a_retry_resumes_the_same_codex_thread(codex_bin: Path, tmp_path: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"',
                     f"bin: {codex_bin}", "retry: {attempts: 2, backoff: 0.1s, max_backoff: 0.1s}")
    turns = [error(500, "scripted overload"), probe(codex_bin), text(f"Fixed. {PROMISE}")]
    with ScriptedLLM(turns, wire="responses") as api:
        result = ralph("run", str(loop), env=codex_env(tmp_path, api.base_url))
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = sessions()
    steps = show(row["id"])["steps"]
    assert [(s["attempt"], s["exit_code"]) for s in steps] == [(1, 1), (2, 0)]
    thread = events(steps[0]["log_path"])[0]["thread_id"]
    assert row["status"] == "complete" and row["agent_session_id"] == thread
    (report,) = probes(Path(steps[1]["log_path"]).read_text())
    assert report["agent"]["argv"][-3:] == ["resume", thread, "-"]
    assert report["tool_env"]["RALPH_ATTEMPT"] == "2"
    assert "currently experiencing high demand" in result.stdout  # codex's words for a 500
    # One thread: the resumed attempt's requests carry attempt 1's prompt as well as its own.
    assert json.dumps(api.scripted_requests[-1]["input"]).count("Iteration 1 of codex-test") == 2
    assert (row["tokens_in"], row["tokens_out"]) == (200, 40)  # the failed request reported none


def test_a_usage_limit_pauses_until_its_reset_and_resumes_the_thread(codex_bin: Path, tmp_path: Path) -> None:
    # Codex says "You've hit your usage limit … try again at 3:43 AM" (from the 429's resets_at):
    # the pause lasts until then (a second or two here), and the same thread goes on.
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"\n          max_consecutive_failures: 1',
                     f"bin: {codex_bin}", "usage_limit: {wait: 1h}")  # the reset is read, not the 1h
    turns = [usage_limit(int(time.time()) + 2), text(f"Fixed. {PROMISE}")]
    with ScriptedLLM(turns, wire="responses") as api:
        result = ralph("run", str(loop), env=codex_env(tmp_path, api.base_url))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hit your usage limit" in result.stdout
    assert re.search(r"^\[1 agent\] paused until \d\d:\d\d:\d\d \(usage limit\)$", result.stdout, re.M), result.stdout
    (row,) = sessions()
    steps = show(row["id"])["steps"]
    assert [(s["attempt"], s["exit_code"]) for s in steps] == [(1, 1), (2, 0)]
    thread = events(steps[0]["log_path"])[0]["thread_id"]
    assert row["status"] == "complete" and row["agent_session_id"] == thread
    assert json.dumps(api.scripted_requests[-1]["input"]).count("Iteration 1 of codex-test") == 2


def test_a_prompt_naming_the_promise_claims_nothing(codex_bin: Path, tmp_path: Path) -> None:
    # The codex CLI's echo of the user message (if any) and the prompt's own lines never count.
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"', f"bin: {codex_bin}")
    assert_a_named_promise_claims_nothing(loop, "responses", lambda api: codex_env(tmp_path, api.base_url))


def test_a_missing_codex_is_a_usage_error(tmp_path: Path, isolated: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    assert_needs_binary(loop, "codex", tmp_path, isolated)

    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"', "bin: /nonexistent/codex")
    assert_bin_not_executable(loop, "/nonexistent/codex", isolated)
