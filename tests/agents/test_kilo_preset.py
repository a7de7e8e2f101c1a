"""The ``kilo`` preset with the real Kilo Code CLI (npm ``@kilocode/cli``, pinned in
tests/support/kilo.py) against the scripted OpenAI-compatible server (tests/support/scripted_llm.py),
driven by a real ``ralph run``. Kilo is an opencode fork: the preset is the opencode one under
another name, so these check what Kilo itself must do for it (import, run --session, events).

Needs npm: tests/support/preset_runs.py ``installed`` says when a failed install skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from handshake import alive, db_rows, spans

from helpers import PY, ralph, write_loop
from tests.agents.test_opencode_preset import FAKE_OPENCODE
from tests.support.kilo import ensure_kilo, kilo_env
from tests.support.preset_runs import agent_step_spans, assert_needs_binary, installed, stored_sessions
from tests.support.scripted_llm import ScriptedLLM, bash, error, text

MODEL = "scripted/scripted-model"
PROMISE = "<promise>COMPLETE</promise>"
STEP_COST = (100 * 3.0 + 20 * 15.0) / 1_000_000  # kilo_env's prices; the server's 100 in / 20 out


@pytest.fixture(scope="session")
def kilo_bin() -> Path:
    return installed(ensure_kilo, "kilo")


def env_for(tmp_path: Path, srv: ScriptedLLM, kilo_bin: Path) -> dict[str, str]:
    return {**kilo_env(tmp_path, srv.base_url, MODEL), "PATH": f"{kilo_bin.parent}{os.pathsep}{os.environ['PATH']}"}


def kilo_sessions(kilo_bin: Path, env: dict[str, str], workdir: Path) -> dict[str, str]:
    listed = subprocess.run([str(kilo_bin), "session", "list", "--format", "json"], cwd=workdir,
                            env={**os.environ, **env, "PWD": str(workdir)}, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=120)
    assert listed.returncode == 0, listed.stderr
    return {s["id"]: s["title"] for s in json.loads(listed.stdout or "[]")}


@pytest.mark.slow
def test_kilo_runs_each_iteration_in_a_kilo_session_that_is_ralphs(kilo_bin: Path, tmp_path: Path,
                                                                   isolated: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    seen, pidfile = tmp_path / "seen.txt", tmp_path / "sleeper.pid"
    # Iteration 1's tool records the session env it saw, quotes the promise (only the model's text
    # counts) and leaves a process running (the preset must end it). Iteration 1's first attempt
    # meets an API error: the retry continues the same Kilo session.
    turns = [
        error(400, "scripted bad request"),
        bash(f'echo "$OPENCODE_SESSION_ID $RALPH_ATTEMPT" >> {seen}; echo "I will say {PROMISE}"; '
             f"sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 &", "Record the session"),
        text("Fixed one test."),
        bash(f'echo "$OPENCODE_SESSION_ID $RALPH_ATTEMPT" >> {seen}', "Record the session"),
        text(f"All tests pass. {PROMISE}"),
    ]
    loop = write_loop(tmp_path, f"""
        name: kilo-bound
        title: "Kilo fix #{{iteration}}"
        workdir: work
        agent:
          preset: kilo
          model: {MODEL}
          prompt: "Fix the next failing test (iteration {{iteration}})."
          timeout: 5m
          retry: {{attempts: 2, backoff: 10ms, max_backoff: 10ms}}
        until:
          max_iterations: 4
          output_contains: "{PROMISE}"
        """)
    capture = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}  # tool content in the spans
    with ScriptedLLM(turns) as srv:
        env = env_for(tmp_path, srv, kilo_bin)
        result = ralph("run", str(loop), env={**env, **capture}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr
    assert "success condition held" in result.stdout

    rows = stored_sessions(isolated)
    assert [r["status"] for r in rows] == ["ok", "complete"]
    assert srv.aux_requests == []  # the sessions had their titles already
    # the retry continued the same session: attempt 1's prompt is in its request as well as its own
    assert json.dumps(srv.scripted_requests[1]["messages"]).count("Fix the next failing test (iteration 1).") == 2
    steps = db_rows(isolated, "SELECT session_id, attempt, exit_code FROM steps WHERE name = 'agent' "
                              "ORDER BY id")
    assert [(s["attempt"], s["exit_code"] != 0) for s in steps] == [(1, True), (2, False), (1, False)]

    # what the agent's shell tool saw: our session ID (the retry's attempt number)
    assert seen.read_text().splitlines() == [f"{rows[0]['id']} 2", f"{rows[1]['id']} 1"]
    for n, row in enumerate(rows, 1):
        assert row["agent_session_id"] == row["id"]
        assert row["title"] == f"Kilo fix #{n}"
        assert (row["tokens_in"], row["tokens_out"]) == (200, 40)
        assert row["cost_usd"] == pytest.approx(2 * STEP_COST)
    # the console shows kilo's events rendered, not JSON; the tool's quote of the promise did not count
    assert "Fixed one test." in result.stdout and "→ bash: $ echo" in result.stdout
    assert '"type"' not in result.stdout
    # Kilo's own store: our IDs, our titles
    assert kilo_sessions(kilo_bin, env, workdir) == {r["id"]: r["title"] for r in rows}
    assert not alive(int(pidfile.read_text()))

    # The opencode preset's spans: provider and model from `provider/model`, each bash call a child
    # span of the attempt that made it, at Kilo's own times, its command and output captured.
    all_spans = spans(isolated)
    agent_spans = agent_step_spans(all_spans)
    tools = sorted((s for s in all_spans if s["name"].startswith("execute_tool")),
                   key=lambda s: int(s["startTimeUnixNano"]))
    made_by = [(rows[0]["id"], "2", "agent.attempt2.log"), (rows[1]["id"], "1", "agent.log")]
    assert len(tools) == len(made_by)
    for tool, (sid, attempt, log) in zip(tools, made_by, strict=True):
        agent_span = agent_spans[(sid, attempt)]
        a = agent_span["attrs"]
        assert (a["gen_ai.provider.name"], a["gen_ai.request.model"], a["openinference.span.kind"]) == (
            "scripted", "scripted-model", "AGENT")
        events = [json.loads(line) for line in (isolated / "logs" / rows[0]["run_id"] / sid / log).read_text()
                  .splitlines() if line.startswith("{")]
        (part,) = [e["part"] for e in events if e["type"] == "tool_use"]
        assert tool["name"] == "execute_tool bash" and tool["parentSpanId"] == agent_span["spanId"]
        t = tool["attrs"]
        assert (t["openinference.span.kind"], t["gen_ai.tool.name"], t["gen_ai.tool.call.id"], t["session.id"]) == (
            "TOOL", "bash", part["callID"], sid)
        assert json.loads(t["gen_ai.tool.call.arguments"]) == part["state"]["input"]
        assert t["gen_ai.tool.call.result"] == part["state"]["output"]
        assert int(tool["startTimeUnixNano"]) == part["state"]["time"]["start"] * 1_000_000  # Kilo's own times
        assert tool.get("status", {}).get("code") in (None, 0, "STATUS_CODE_UNSET")
    assert "I will say" in tools[0]["attrs"]["output.value"]


def test_a_missing_kilo_is_a_usage_error(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, "name: k\nagent: {preset: kilo, prompt: hi}\n")
    assert_needs_binary(loop, "kilo", tmp_path, isolated)


def test_a_kilo_that_cannot_be_bound_runs_with_title_and_says_so_as_kilo(tmp_path: Path, isolated: Path) -> None:
    """The opencode preset's fallback, under kilo's name: a stand-in whose `run --session` cannot
    find the imported session (tests/agents/test_opencode_preset.py's fake; no LLM needed)."""
    fake = tmp_path / "kilo"
    fake.write_text(f"#!{PY}\n{FAKE_OPENCODE}")
    fake.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    loop = write_loop(tmp_path, """
        name: kilo-fallback
        title: "Retry #{iteration}"
        agent: {preset: kilo, bin: ./kilo, prompt: hello, retry: {attempts: 2, backoff: 10ms}}
        until: {max_iterations: 1}
        """)
    result = ralph("run", str(loop), env={"FAKE_CALLS": str(calls), "FAKE_MODE": "not-found"})
    assert result.returncode == 0, result.stdout + result.stderr
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    (row,) = stored_sessions(isolated)
    assert [a[0] for a in argvs] == ["import", "export", "run", "run"]
    assert argvs[0][1].endswith("/kilo-session.json")
    assert f"--session={row['id']}" in argvs[2] and "--title=Retry #1" in argvs[3]
    assert result.stderr.count("warning: kilo: cannot bind its session to ralph's "
                               "(`kilo run --session` said: Session not found)") == 1, result.stderr
    assert "recording kilo's own session ID" in result.stderr
    assert row["agent_session_id"] == "ses_0000000000ffOpencodesOwn1"
