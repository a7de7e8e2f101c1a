"""What the preset tests (tests/agents/) share: the real agent CLI installed or the test skipped,
the history read back (``ralph sessions`` / ``ralph show``, or the SQLite file), a loop file per
preset, and the checks several presets' tests make alike: a two-iteration run, the session env the
agent and its tool saw, tool spans, a missing binary, a prompt naming the promise, and an interrupt
while the agent's tool runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from handshake import alive, db_rows, wait_for_text

from helpers import PY, ralph, write_loop
from tests.support.llm_wires import Wire
from tests.support.npm import NpmUnavailable
from tests.support.scripted_llm import ScriptedLLM, bash, text

PROMISE = "<promise>COMPLETE</promise>"
# ralph/agents/claude.py's, fixed forever: written out here so that a change to it fails the tests.
NAMESPACE = uuid.UUID("5f0b8d5e-7c1a-4f3e-9a52-72616c706821")


def bound_uuid(session_id: str) -> str:
    """The native session UUID a preset binding the caller's UUID (claude, gemini, qwen) derives from ours."""
    return str(uuid.uuid5(NAMESPACE, session_id))


def installed(ensure: Callable[[], Path], name: str, unavailable: type[Exception] = NpmUnavailable) -> Path:
    """The CLI ``ensure`` installs (once, into $RALPH_TEST_CACHE). With CI set, failing to install it
    fails the test; without CI the test is skipped only when npm is absent."""
    try:
        return ensure()
    except unavailable as e:
        if not os.environ.get("CI") and shutil.which("npm") is None:
            pytest.skip(f"{name} not available: {e}")
        pytest.fail(f"could not install {name}: {e}")


def preset_loop(tmp_path: Path, until: str, *agent_keys: str, preset: str, model: str, args: Sequence[str] = (),
              prompt_tail: str = "") -> Path:
    """A loop ``PRESET-test`` titled "Preset test #N" in ``tmp_path/work``, at most 5 iterations."""
    (tmp_path / "work").mkdir(exist_ok=True)
    extra = "\n          ".join([*([f"args: {json.dumps(list(args))}"] if args else []), *agent_keys])
    return write_loop(tmp_path, f"""
        name: {preset}-test
        title: "{preset.capitalize()} test #{{iteration}}"
        workdir: work
        agent:
          preset: {preset}
          prompt: "Iteration {{iteration}} of {{loop}}: fix the next failing test{prompt_tail}"
          model: {model}
          {extra}
        until:
          max_iterations: 5
          {until}
        """)


def sessions() -> list[dict[str, Any]]:
    """``ralph sessions --json``, by iteration."""
    result = ralph("sessions", "--json")
    assert result.returncode == 0, result.stderr
    return sorted(json.loads(result.stdout), key=lambda s: s["iteration"])


def show(session_id: str) -> dict[str, Any]:
    result = ralph("show", session_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def stored_sessions(state: Path) -> list[dict[str, Any]]:
    """The history's session rows (the SQLite file in ``state``), by iteration."""
    return db_rows(state, "SELECT * FROM sessions ORDER BY iteration")


def events(log_path: str | Path) -> list[dict[str, Any]]:
    """The JSON events of a step log (or an agent's own session file)."""
    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.startswith("{")]


def assert_needs_binary(loop: Path, preset: str, tmp_path: Path, state: Path) -> None:
    """With no ``PRESET`` on PATH (and no agent.bin), ``ralph run LOOP`` is a usage error: nothing runs."""
    result = ralph("run", str(loop), env={"PATH": str(tmp_path / "empty")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the {preset} preset needs `{preset}` on PATH (or set agent.bin)" in result.stderr
    assert not (state / "ralph.db").exists()  # nothing ran


def assert_a_named_promise_claims_nothing(loop: Path, wire: Wire,
                                          env_for: Callable[[ScriptedLLM], Mapping[str, str]]) -> None:
    """The prompt of a ``preset_loop`` made to name the promise: the CLI's echo of the user message
    (if any) and the prompt's own lines never count, only the model's text does."""
    loop.write_text(loop.read_text().replace("fix the next failing test", f"fix it, then say {PROMISE}"))
    with ScriptedLLM([text("Working on it."), text(f"Done. {PROMISE}")], wire=wire) as api:
        result = ralph("run", str(loop), env=env_for(api))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["status"] for r in sessions()] == ["ok", "complete"]
    assert f"then say {PROMISE}" in json.dumps(api.scripted_requests[0])


def assert_bin_not_executable(loop: Path, configured: str, state: Path) -> None:
    """LOOP's agent.bin (``configured``) names no executable: a usage error naming the key, nothing runs."""
    result = ralph("run", str(loop))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"'{configured}' is not an executable file" in result.stderr and "agent.bin" in result.stderr
    assert not (state / "ralph.db").exists()


def two_iterations(result: subprocess.CompletedProcess[str], api: ScriptedLLM, requests: int,
                   model: str) -> list[dict[str, Any]]:
    """The sessions of a run whose promise held in iteration 2 (the model named in every one of
    ``requests`` requests, one scripted turn each)."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success condition held" in result.stdout + result.stderr
    assert len(api.scripted_requests) == requests
    assert {r["model"] for r in api.scripted_requests} == {model}
    rows = sessions()
    assert [r["status"] for r in rows] == ["ok", "complete"]
    return rows


def assert_session_env(report: dict[str, Any], row: dict[str, Any], title: str, iteration: int,
                       traceparent: str | None = None) -> None:
    """The agent's own env and what its shell tool saw (an agent_probe report) name the session."""
    for env in (report["agent"]["env"], report["tool_env"]):
        assert env["OPENCODE_SESSION_ID"] == env["RALPH_SESSION_ID"] == row["id"]
        assert env["OPENCODE_SESSION_TITLE"] == title
        assert env["RALPH_ITERATION"] == str(iteration)
        assert env["RALPH_STEP"] == "agent" and env["RALPH_ATTEMPT"] == "1"
        if traceparent is not None:
            assert env["TRACEPARENT"].startswith(traceparent)


def tool_attributes(name: str, call_id: str, session_id: str) -> dict[str, str]:
    """A tool span's attributes when content is not captured (the default): nothing but these."""
    return {"openinference.span.kind": "TOOL", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
            "tool.name": name, "gen_ai.tool.call.id": call_id, "session.id": session_id,
            "gen_ai.conversation.id": session_id}


def agent_step_spans(all_spans: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The agent steps' spans of traces.jsonl (``handshake.spans``) by (session ID, attempt)."""
    return {(s["attrs"]["session.id"], s["attrs"]["ralph.attempt"]): s for s in all_spans if s["name"] == "ralph.step"}


def assert_tool_span(tool: dict[str, Any], name: str, step: dict[str, Any]) -> None:
    """A span of traces.jsonl: ``execute_tool NAME``, not failed, a child of the agent step
    ``step`` and within its time."""
    assert tool["name"] == f"execute_tool {name}" and tool["parentSpanId"] == step["spanId"]
    assert tool.get("status", {}).get("code") in (None, 0, "STATUS_CODE_UNSET")
    assert int(step["startTimeUnixNano"]) <= int(tool["startTimeUnixNano"]) <= int(tool["endTimeUnixNano"]) \
        <= int(step["endTimeUnixNano"])


def leave_running(pidfile: Path) -> str:
    """Shell text that leaves a process running in a session of its own (the preset must end it);
    the tool returns once it runs."""
    return (f"; setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 & "
            f"until [ -s {pidfile} ]; do sleep 0.05; done")


def assert_interrupt_ends_tool(tmp_path: Path, loop: Path, state: Path,
                               env_for: Callable[[ScriptedLLM], Mapping[str, str]]) -> None:
    """``ralph run LOOP`` whose agent's shell tool starts a long command; once that runs, SIGINT:
    ralph exits 130, the tool's process is gone, the session is interrupted."""
    pidfile = tmp_path / "tool.pid"
    with ScriptedLLM([bash(f"sh -c 'echo $$ > {pidfile}; exec sleep 300'", "Slow tests"), "done"]) as srv:
        env = {**os.environ, **env_for(srv)}
        out = tmp_path / "ralph.out"
        with open(out, "w") as fh:
            proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop)], env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            tool = int(wait_for_text(pidfile, "\n", timeout=300))  # the tool is running
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not alive(tool)
    assert [r["status"] for r in db_rows(state, "SELECT status FROM sessions")] == ["interrupted"]
