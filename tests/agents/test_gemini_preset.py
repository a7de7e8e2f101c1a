"""The ``gemini`` preset with the real Gemini CLI (npm ``@google/gemini-cli``, pinned in
tests/support/npm.py) against a scripted Gemini API on 127.0.0.1 (``GOOGLE_GEMINI_BASE_URL``;
tests/support/scripted_api.py), driven by a real ``ralph run``. The model's turns make Gemini's
shell tool (``run_shell_command``) run tests/support/agent_probe.py, which reports the env the tool
saw and the argv and env of the gemini (node) process above it.

Needs npm and node (the CLI is installed once into $RALPH_TEST_CACHE or ~/.cache/ralph-tests). With
CI set, failing to install it fails these tests; without CI they are skipped only when npm is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from helpers import PY, ROOT, ralph, write_loop
from tests.support.agent_probe import probes
from tests.support.node_agents import gemini_env, node
from tests.support.npm import NpmUnavailable, ensure_gemini
from tests.support.scripted_api import ScriptedAPI, Turn, error, shell, text

pytestmark = pytest.mark.slow  # node start-up and the CLI's own: seconds per attempt

PROBE = ROOT / "tests" / "support" / "agent_probe.py"
PROMISE = "<promise>COMPLETE</promise>"
MODEL = "gemini-2.5-flash"
NAMESPACE = uuid.UUID("5f0b8d5e-7c1a-4f3e-9a52-72616c706821")  # ralph/agents/claude.py: fixed forever


@pytest.fixture(scope="session")
def gemini_bin() -> Path:
    try:
        return ensure_gemini()
    except NpmUnavailable as e:
        if not os.environ.get("CI") and shutil.which("npm") is None:
            pytest.skip(f"gemini not available: {e}")
        pytest.fail(f"could not install gemini: {e}")


def probe(then: str = "") -> Turn:
    return shell(f"{PY} {PROBE} {node()}{then}")


def loop_file(tmp_path: Path, until: str, *agent_keys: str) -> Path:
    (tmp_path / "work").mkdir(exist_ok=True)
    extra = "\n          ".join(agent_keys)
    return write_loop(tmp_path, f"""
        name: gemini-test
        title: "Gemini test #{{iteration}}"
        workdir: work
        agent:
          preset: gemini
          prompt: "Iteration {{iteration}} of {{loop}}: fix the next failing test, then say {PROMISE}"
          model: {MODEL}
          {extra}
        until:
          max_iterations: 5
          {until}
        """)


def sessions() -> list[dict]:
    result = ralph("sessions", "--json")
    assert result.returncode == 0, result.stderr
    return sorted(json.loads(result.stdout), key=lambda s: s["iteration"])


def show(session_id: str) -> dict:
    result = ralph("show", session_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def events(log_path: str) -> list[dict]:
    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.startswith("{")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")


def test_two_iterations_with_the_real_gemini(gemini_bin: Path, tmp_path: Path, isolated: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    pidfile = tmp_path / "sleeper.pid"
    # Iteration 1's tool leaves a process running in a session of its own: the preset must end it.
    leave = (f"; setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 & "
             f"until [ -s {pidfile} ]; do sleep 0.05; done")  # the tool returns once it runs
    turns = [probe(leave), text("One test fixed,\nmore to go."),
             probe(), text(f"All tests pass. {PROMISE}")]
    with ScriptedAPI(turns, shape="gemini") as api:
        result = ralph("run", str(loop), env=gemini_env(tmp_path, gemini_bin, api.base_url), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success condition held" in result.stdout + result.stderr

    # The prompt reached the model (on stdin), with the model named in the path; one turn per request.
    assert len(api.scripted_requests) == 4
    assert {r["model"] for r in api.scripted_requests} == {MODEL}
    assert "Iteration 1 of gemini-test: fix the next failing test" in json.dumps(api.scripted_requests[0]["contents"])

    rows = sessions()
    # The prompt itself names the promise: Gemini echoes it as a user message, which never counts.
    assert [r["status"] for r in rows] == ["ok", "complete"]
    for number, row in enumerate(rows, 1):
        gemini_id = str(uuid.uuid5(NAMESPACE, row["id"]))
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

        (report,) = probes(Path(step["log_path"]).read_text())
        agent = report["agent"]
        assert agent is not None, report
        at = agent["argv"].index("-o")
        assert agent["argv"][at:] == ["-o", "stream-json", "--skip-trust", "--yolo", "--session-id", gemini_id,
                                      "-m", MODEL]
        for env in (agent["env"], report["tool_env"]):  # the agent's own env, and what its shell tool saw
            assert env["OPENCODE_SESSION_ID"] == env["RALPH_SESSION_ID"] == row["id"]
            assert env["OPENCODE_SESSION_TITLE"] == f"Gemini test #{number}"
            assert env["RALPH_ITERATION"] == str(number)
            assert env["RALPH_STEP"] == "agent" and env["RALPH_ATTEMPT"] == "1"

    # Gemini keeps each session under the derived UUID in its own store.
    chats = list((tmp_path / "gemini-home" / ".gemini" / "tmp").glob("*/chats/session-*.jsonl"))
    assert sorted(json.loads(p.read_text().splitlines()[0])["sessionId"] for p in chats) == sorted(
        str(uuid.uuid5(NAMESPACE, r["id"])) for r in rows)

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
    turns = [error(400, "scripted bad request"), probe(), error(400, "scripted bad request"), probe(),
             text(f"Fixed. {PROMISE}")]
    with ScriptedAPI(turns, shape="gemini") as api:
        result = ralph("run", str(loop), env=gemini_env(tmp_path, gemini_bin, api.base_url), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = sessions()
    first, second = (str(uuid.uuid5(NAMESPACE, name)) for name in (row["id"], f"{row['id']}#2"))
    assert row["status"] == "complete" and row["agent_session_id"] == second
    steps = show(row["id"])["steps"]
    assert [s["attempt"] for s in steps] == [1, 2, 3]
    assert [s["exit_code"] != 0 for s in steps] == [True, True, False]
    assert events(steps[0]["log_path"])[0]["session_id"] == first
    argvs = [probes(Path(s["log_path"]).read_text())[0]["agent"]["argv"] for s in steps[1:]]
    assert [a[a.index("--yolo") + 1:a.index("--yolo") + 3] for a in argvs] == [
        ["--session-id", second], ["--resume", second]]
    assert "gemini: error: " in result.stdout and "scripted bad request" in result.stdout
    # One conversation from attempt 2 on: attempt 3's request carries attempt 2's prompt and tool call.
    assert len(api.scripted_requests) == 5
    resumed = json.dumps(api.scripted_requests[3]["contents"])
    assert resumed.count("Iteration 1 of gemini-test") == 2 and "RALPH-PROBE" in resumed


def test_a_missing_gemini_is_a_usage_error(tmp_path: Path, isolated: Path) -> None:
    loop = loop_file(tmp_path, f'output_contains: "{PROMISE}"')
    result = ralph("run", str(loop), env={"PATH": str(tmp_path / "empty")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the gemini preset needs `gemini` on PATH (or set agent.bin)" in result.stderr
    assert not (isolated / "ralph.db").exists()  # nothing ran
