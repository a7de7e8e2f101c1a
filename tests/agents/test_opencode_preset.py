"""The ``opencode`` preset, end to end: a real ``ralph run`` (CLI subprocess) drives the real opencode
(npm ``opencode-ai``, pinned in tests/support/opencode.py) against the scripted OpenAI-compatible
server in this process (tests/support/scripted_llm.py).

With CI set these must run: failing to install opencode fails them. Locally they are skipped
only when npm is absent. Each opencode run takes a few seconds, so the runs are few and each test
checks much. The parser and missing-binary tests need no opencode.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from handshake import PY, alive, db_rows, spans

from helpers import ralph, write_loop
from ralph.agents.base import AgentReport
from ralph.agents.opencode import IMPORT_FILE, OpencodeParser, _Binding
from tests.support.opencode import OpencodeUnavailable, ensure_opencode, opencode_env, parse_events, run_opencode
from tests.support.preset_runs import assert_interrupt_ends_tool, installed, stored_sessions
from tests.support.scripted_llm import ScriptedLLM, bash, rate_limited, text

MODEL = "scripted/scripted-model"
ENV_COMMAND = "env | grep -E '^(OPENCODE_SESSION|RALPH_|TRACEPARENT)' | sort"
# opencode_env's model cost: USD 3 / 15 per million input / output tokens; the scripted server
# reports 100 prompt + 20 completion tokens per reply.
STEP_COST = (100 * 3.0 + 20 * 15.0) / 1_000_000
PROMISE = "<promise>COMPLETE</promise>"


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    return installed(ensure_opencode, "opencode", OpencodeUnavailable)


@pytest.fixture
def no_opencode_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """opencode settings of the developer's shell (e.g. OPENCODE_CONFIG_CONTENT) must not leak in."""
    for name in list(os.environ):
        if name.startswith("OPENCODE_"):
            monkeypatch.delenv(name)


def ralph_env(tmp_path: Path, srv: ScriptedLLM, binary: Path) -> dict[str, str]:
    """What ralph's process gets: an isolated opencode home pointed at ``srv``, opencode on PATH."""
    return {**opencode_env(tmp_path, srv.base_url, MODEL), "PATH": f"{binary.parent}{os.pathsep}{os.environ['PATH']}"}


def tool_env(body: dict[str, Any]) -> dict[str, str]:
    """The bash tool's output (``NAME=value`` lines) as opencode sent it back to the model."""
    outputs = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    assert outputs, body["messages"]
    return dict(line.split("=", 1) for line in outputs[-1].splitlines() if "=" in line)


def native_sessions(binary: Path, env: dict[str, str], workdir: Path) -> dict[str, str]:
    listed = run_opencode(binary, env, workdir, ["session", "list", "--format", "json"])
    assert listed.returncode == 0, listed.stderr
    return {s["id"]: s["title"] for s in json.loads(listed.stdout or "[]")}


# -- the real client -----------------------------------------------------------------------------


@pytest.mark.opencode
def test_each_iteration_runs_in_an_opencode_session_that_is_ralphs(
    opencode_bin: Path, tmp_path: Path, isolated: Path, no_opencode_settings: None
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    pidfile = tmp_path / "sleeper.pid"
    # Iteration 1's tool also quotes the promise (output_contains counts the model's text only) and
    # leaves a process running in the tool's own session (the preset must end it).
    turns = [
        bash(f"{ENV_COMMAND}; echo 'I will say {PROMISE} when done'; "
             f"sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 &", "Print the session env"),
        text("Fixed one test."),
        bash(ENV_COMMAND, "Print the session env"),
        text("Fixed another\ntest."),
        bash(ENV_COMMAND, "Print the session env"),
        text(f"All tests pass. {PROMISE}"),
    ]
    loop = write_loop(tmp_path, f"""
        name: oc-bound
        title: "Fix tests #{{iteration}} ({{loop}})"
        workdir: work
        agent:
          preset: opencode
          model: {MODEL}
          prompt: |
            Fix the next failing test (iteration {{iteration}}).
            Say "{PROMISE}" when none is left.
          timeout: 5m
        until:
          max_iterations: 5
          output_contains: "{PROMISE}"
        """)
    with ScriptedLLM(turns) as srv:
        env = ralph_env(tmp_path, srv, opencode_bin)
        result = ralph("run", str(loop), env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr
    assert "success condition held" in result.stdout

    rows = stored_sessions(isolated)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert [r["status"] for r in rows] == ["ok", "ok", "complete"]
    assert srv.aux_requests == []  # the sessions already had their titles: no title generation
    assert len(srv.scripted_requests) == 6
    for n, row in enumerate(rows, 1):
        sid, title = row["id"], row["title"]
        assert title == f"Fix tests #{n} (oc-bound)"
        # opencode's own session is ours: history and the span say so
        assert row["agent_session_id"] == sid
        assert (row["tokens_in"], row["tokens_out"]) == (200, 40)  # two LLM calls
        assert row["cost_usd"] == pytest.approx(2 * STEP_COST)

        first, after_tool = srv.scripted_requests[2 * n - 2], srv.scripted_requests[2 * n - 1]
        assert first["messages"][-1]["content"] == (
            f'Fix the next failing test (iteration {n}).\nSay "{PROMISE}" when none is left.\n')  # stdin, verbatim
        seen = tool_env(after_tool)  # what opencode's bash tool saw, as it went back to the model
        assert seen["OPENCODE_SESSION_ID"] == seen["RALPH_SESSION_ID"] == sid
        assert seen["OPENCODE_SESSION_TITLE"] == seen["RALPH_SESSION_TITLE"] == title
        assert seen["RALPH_ITERATION"] == str(n)
        assert (seen["RALPH_STEP"], seen["RALPH_ATTEMPT"], seen["RALPH_LOOP"]) == ("agent", "1", "oc-bound")
        agent_span = next(s for s in spans(isolated) if s["name"] == "ralph.step"
                          and s["attrs"]["session.id"] == sid and s["attrs"]["ralph.step.name"] == "agent")
        assert seen["TRACEPARENT"].startswith(f"00-{agent_span['traceId']}-{agent_span['spanId']}-")

        # the step log keeps opencode's raw events, the tool's output among them
        log = (isolated / "logs" / row["run_id"] / sid / "agent.log").read_text()
        events = parse_events(log)
        assert {e["sessionID"] for e in events} == {sid}
        assert [e["type"] for e in events] == ["step_start", "tool_use", "step_finish", "step_start", "text",
                                               "step_finish"]
        assert f"OPENCODE_SESSION_ID={sid}" in events[1]["part"]["state"]["output"]
        imported = isolated / "logs" / row["run_id"] / sid / IMPORT_FILE
        assert stat.S_IMODE(imported.stat().st_mode) == 0o600
        assert json.loads(imported.read_text())["info"]["title"] == title

    # the console shows a readable rendering, not JSON
    assert "[1 agent] → bash: $ env | grep" in result.stdout
    assert "[1 agent] Fixed one test." in result.stdout
    assert "[2 agent] Fixed another\n[2 agent] test." in result.stdout
    assert '"type"' not in result.stdout

    # tokens and cost on the iteration spans; GenAI / OpenInference on the agent spans; a span per tool call
    all_spans = spans(isolated)
    iterations = {s["attrs"]["session.id"]: s["attrs"] for s in all_spans if s["name"] == "ralph.iteration"}
    for row in rows:
        attrs = iterations[row["id"]]
        assert attrs["ralph.agent.session_id"] == row["id"]
        assert int(attrs["ralph.usage.input_tokens"]) == 200
        assert int(attrs["ralph.usage.output_tokens"]) == 40
        assert attrs["ralph.cost_usd"] == pytest.approx(2 * STEP_COST)
        assert attrs["openinference.span.kind"] == "CHAIN" and attrs["gen_ai.conversation.id"] == row["id"]
        agent_span = next(s for s in all_spans if s["name"] == "ralph.step" and s["attrs"]["session.id"] == row["id"])
        a = agent_span["attrs"]
        assert (a["openinference.span.kind"], a["gen_ai.operation.name"], a["gen_ai.agent.name"]) == (
            "AGENT", "invoke_agent", "oc-bound")
        assert (a["gen_ai.provider.name"], a["gen_ai.request.model"], a["llm.model_name"]) == (
            "scripted", "scripted-model", "scripted-model")
        assert (int(a["gen_ai.usage.input_tokens"]), int(a["gen_ai.usage.output_tokens"])) == (200, 40)
        assert [int(a[f"llm.token_count.{k}"]) for k in ("prompt", "completion", "total")] == [200, 40, 240]
        assert a["gen_ai.conversation.id"] == row["id"] and a["ralph.agent.session_id"] == row["id"]
        (llm,) = [s for s in all_spans if s.get("parentSpanId") == agent_span["spanId"] and s["name"].startswith("chat")]
        assert llm["name"] == "chat scripted-model" and llm["attrs"]["openinference.span.kind"] == "LLM"
        assert (int(llm["attrs"]["llm.token_count.prompt"]), int(llm["attrs"]["gen_ai.usage.output_tokens"])) == (
            200, 40)
        (tool,) = [s for s in all_spans if s.get("parentSpanId") == agent_span["spanId"] and s is not llm]
        events = parse_events((isolated / "logs" / row["run_id"] / row["id"] / "agent.log").read_text())
        part = next(e["part"] for e in events if e["type"] == "tool_use")
        assert tool["name"] == "execute_tool bash"
        assert tool["attrs"] == {
            "openinference.span.kind": "TOOL", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "bash",
            "tool.name": "bash", "gen_ai.tool.call.id": part["callID"], "session.id": row["id"],
            "gen_ai.conversation.id": row["id"]}  # no content: that is asked for
        assert int(tool["startTimeUnixNano"]) == part["state"]["time"]["start"] * 1_000_000  # opencode's own times
        assert int(tool["endTimeUnixNano"]) == part["state"]["time"]["end"] * 1_000_000
        assert tool.get("status", {}).get("code") in (None, 0, "STATUS_CODE_UNSET")
    assert "env | grep" not in (isolated / "traces.jsonl").read_text()
    assert "Fix the next failing test" not in (isolated / "traces.jsonl").read_text()

    # `ralph show` draws the tool spans in the span tree
    tree = ralph("show", rows[0]["run_id"]).stdout
    assert tree.count("execute_tool bash") == 3, tree

    listed = json.loads(ralph("sessions", "--json").stdout)
    assert {(s["id"], s["agent_session_id"], s["cost_usd"]) for s in listed} == {
        (r["id"], r["id"], r["cost_usd"]) for r in rows}

    # opencode's own store: the same IDs and titles
    assert native_sessions(opencode_bin, env, workdir) == {r["id"]: r["title"] for r in rows}
    exported = run_opencode(opencode_bin, env, workdir, ["export", rows[0]["id"]])
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    assert (doc["info"]["id"], doc["info"]["title"], doc["info"]["directory"]) == (
        rows[0]["id"], rows[0]["title"], str(workdir))
    assert doc["info"]["cost"] == pytest.approx(2 * STEP_COST)

    # what the tool left running did not outlive the attempt
    assert not alive(int(pidfile.read_text()))


@pytest.mark.opencode
def test_without_binding_it_falls_back_to_title_records_opencodes_ids_and_max_cost_stops_it(
    opencode_bin: Path, tmp_path: Path, isolated: Path, no_opencode_settings: None
) -> None:
    """An opencode whose `import` fails (another version): --title, opencode's session IDs
    recorded, one warning per run; and the cost it reports ends the loop at max_cost_usd."""
    calls = tmp_path / "calls.log"
    wrapper = tmp_path / "old-opencode"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"for a in \"$@\"; do printf '%s\\n' \"$a\"; done >> '{calls}'; echo '--' >> '{calls}'\n"
        'if [ "$1" = import ]; then echo "Error: Unexpected error (this opencode imports no such file)" >&2; '
        "exit 1; fi\n"
        f"exec '{opencode_bin}' \"$@\"\n")
    wrapper.chmod(0o755)
    (tmp_path / "work").mkdir()
    loop = write_loop(tmp_path, f"""
        name: oc-fallback
        title: "-Upkeep #{{iteration}}"
        workdir: work
        agent:
          preset: opencode
          bin: ./old-opencode
          model: {MODEL}
          prompt: "Keep going"
        until:
          max_iterations: 5
          max_cost_usd: 0.001
          output_contains: "{PROMISE}"
        """)
    with ScriptedLLM(["Working on it (1).", "Working on it (2).", "Working on it (3)."]) as srv:
        env = ralph_env(tmp_path, srv, opencode_bin)
        result = ralph("run", str(loop), env=env, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "max_cost_usd" in result.stdout
    assert result.stderr.count("warning: opencode: cannot bind its session") == 1, result.stderr

    rows = stored_sessions(isolated)
    assert [r["iteration"] for r in rows] == [1, 2]  # 2 x 0.0006 >= 0.001
    invocations = [c.splitlines() for c in calls.read_text().split("--\n") if c]
    assert [c[0] for c in invocations] == ["import", "run", "run"]  # a failed binding is not retried in the run
    for row, argv in zip(rows, invocations[1:], strict=True):
        assert f"--title={row['title']}" in argv
        assert not any(a.startswith("--session") for a in argv)
        agent_id = row["agent_session_id"]
        assert agent_id.startswith("ses_") and agent_id != row["id"]
        assert row["cost_usd"] == pytest.approx(STEP_COST)
        assert (row["tokens_in"], row["tokens_out"]) == (100, 20)
    assert len({r["agent_session_id"] for r in rows}) == 2
    iterations = {s["attrs"]["session.id"]: s["attrs"] for s in spans(isolated) if s["name"] == "ralph.iteration"}
    assert [iterations[r["id"]]["ralph.agent.session_id"] for r in rows] == [r["agent_session_id"] for r in rows]
    # opencode's sessions: its own IDs, our titles
    assert native_sessions(opencode_bin, env, tmp_path / "work") == {r["agent_session_id"]: r["title"] for r in rows}


@pytest.mark.opencode
def test_an_interrupt_ends_opencode_and_what_its_bash_tool_started(
    opencode_bin: Path, tmp_path: Path, isolated: Path, no_opencode_settings: None
) -> None:
    """The bash tool runs in its own session: ending opencode's process group misses it."""
    (tmp_path / "work").mkdir()
    loop = write_loop(tmp_path, f"""
        name: oc-interrupt
        workdir: work
        agent: {{preset: opencode, model: {MODEL}, prompt: "Run the slow tests"}}
        """)
    assert_interrupt_ends_tool(tmp_path, loop, isolated, lambda srv: ralph_env(tmp_path, srv, opencode_bin))


# -- no opencode needed --------------------------------------------------------------------------


@pytest.mark.opencode
def test_a_rate_limit_opencode_gives_up_on_pauses_the_loop_and_continues_the_session(
    opencode_bin: Path, tmp_path: Path, isolated: Path, no_opencode_settings: None
) -> None:
    """opencode retries a 429 itself (honouring retry-after-ms); when it gives up, its error event
    carries the status and headers: ralph pauses until the retry-after, then runs the same
    iteration again in the same opencode session. The prompt names the promise: no claim."""
    (tmp_path / "work").mkdir()
    loop = write_loop(tmp_path, f"""
        name: oc-limited
        workdir: work
        agent:
          preset: opencode
          model: {MODEL}
          prompt: "Fix the tests. Say {PROMISE} when done."
        until: {{max_iterations: 1, max_consecutive_failures: 1, output_contains: "{PROMISE}"}}
        """)
    turns = [rate_limited(1, retry_after_ms=20)] * 6 + [text(f"Done. {PROMISE}")]
    with ScriptedLLM(turns) as srv:
        result = ralph("run", str(loop), env=ralph_env(tmp_path, srv, opencode_bin), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\[1 agent\] paused until \d\d:\d\d:\d\d \(usage limit\)$", result.stdout, re.M), result.stdout
    (row,) = stored_sessions(isolated)
    assert row["status"] == "complete" and row["agent_session_id"] == row["id"]
    steps = db_rows(isolated, "SELECT attempt, exit_code FROM steps ORDER BY id")
    assert [s["attempt"] for s in steps] == [1, 2] and steps[1]["exit_code"] == 0
    # One conversation: the last request carries the prompt of both runs.
    assert json.dumps(srv.scripted_requests[-1]["messages"]).count("Fix the tests.") == 2


def test_a_missing_opencode_is_a_usage_error_before_anything_runs(tmp_path: Path, isolated: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    loop = write_loop(tmp_path, """
        name: oc-missing
        agent:
          preset: opencode
          prompt: "hello"
        """)
    result = ralph("run", str(loop), env={"PATH": str(empty)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"{loop}:") and "`opencode` on PATH (or set agent.bin)" in result.stderr
    assert not (isolated / "ralph.db").exists()

    write_loop(tmp_path, """
        name: oc-missing
        agent:
          preset: opencode
          bin: ./no-such-opencode
          prompt: "hello"
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"{loop}:") and "agent.bin: './no-such-opencode' is not an executable" in result.stderr
    assert not (isolated / "ralph.db").exists()


# A stand-in for an opencode whose `run --session` cannot find an imported session (import and
# export "work"), or that fails its first run: the preset's reactions, without an LLM. It logs
# each argv (one JSON list per line) to $FAKE_CALLS.
FAKE_OPENCODE = r"""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(json.dumps(args) + "\n")
mode = os.environ["FAKE_MODE"]
if args[0] == "import":
    info = json.load(open(args[1]))["info"]
    open(os.environ["FAKE_CALLS"] + ".info", "w").write(json.dumps(info))
    print("Imported session: " + info["id"])
elif args[0] == "export":
    print("Exporting session: " + args[1], file=sys.stderr)
    print(json.dumps({"info": json.load(open(os.environ["FAKE_CALLS"] + ".info")), "messages": []}, indent=2))
elif any(a.startswith("--session=") for a in args) and mode == "not-found":
    print("\x1b[91m\x1b[1mError: \x1b[0mSession not found", file=sys.stderr)
    sys.exit(1)
else:
    sid = next((a.split("=", 1)[1] for a in args if a.startswith("--session=")), "ses_0000000000ffOpencodesOwn1")
    runs = sum(1 for line in open(os.environ["FAKE_CALLS"]) if json.loads(line)[0] == "run")
    event = {"type": "step_finish", "sessionID": sid, "part": {"tokens": {"input": 7, "output": 3}, "cost": 0.5}}
    print(json.dumps(event), flush=True)
    if mode == "fail-first" and runs == 1:
        print(json.dumps({"type": "error", "sessionID": sid, "error": {"name": "APIError", "data": {"message": "overloaded"}}}))
        sys.exit(1)
"""


@pytest.mark.parametrize("mode", ["not-found", "fail-first"])
def test_retries_stay_in_the_iterations_session_and_a_lost_binding_falls_back(
    mode: str, tmp_path: Path, isolated: Path
) -> None:
    fake = tmp_path / "opencode"
    fake.write_text(f"#!{PY}\n{FAKE_OPENCODE}")
    fake.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    loop = write_loop(tmp_path, """
        name: oc-retry
        title: "Retry #{iteration}"
        agent:
          preset: opencode
          bin: ./opencode
          prompt: "hello"
          retry: {attempts: 2, backoff: 10ms}
        until: {max_iterations: 2}
        """)
    result = ralph("run", str(loop), env={"FAKE_CALLS": str(calls), "FAKE_MODE": mode})
    assert result.returncode == 0, result.stdout + result.stderr
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    rows = stored_sessions(isolated)
    first, second = rows[0]["id"], rows[1]["id"]
    binding = [a for argv in argvs for a in argv if a.startswith(("--session=", "--title="))]
    if mode == "not-found":
        # attempt 1: --session fails; attempt 2 and the next iteration: --title, no import any more
        assert [a[0] for a in argvs] == ["import", "export", "run", "run", "run"]
        assert binding == [f"--session={first}", "--title=Retry #1", "--title=Retry #2"]
        assert result.stderr.count("cannot bind its session") == 1, result.stderr
        assert "Session not found" in result.stderr and "Error: Session not found" in result.stdout
        assert [r["agent_session_id"] for r in rows] == ["ses_0000000000ffOpencodesOwn1"] * 2
    else:
        # the retry continues the imported session (no second import); binding is checked once per run
        assert [a[0] for a in argvs] == ["import", "export", "run", "run", "import", "run"]
        assert binding == [f"--session={first}", f"--session={first}", f"--session={second}"]
        assert "warning" not in result.stderr, result.stderr
        assert "error: APIError: overloaded" in result.stdout
        assert [r["agent_session_id"] for r in rows] == [first, second]
    # the attempts of an iteration add up (a run that could not find its session reported nothing)
    counted = [(14, 6, 1.0), (7, 3, 0.5)] if mode == "fail-first" else [(7, 3, 0.5)] * 2
    assert [(r["tokens_in"], r["tokens_out"], r["cost_usd"]) for r in rows] == counted


# Events as opencode 1.18.33 printed them (docs/opencode-notes.md), trimmed.
EVENTS = [
    {"type": "step_start", "sessionID": "ses_theirs", "part": {"type": "step-start"}},
    {"type": "tool_use", "sessionID": "ses_theirs", "part": {"type": "tool", "tool": "bash", "state": {
        "status": "completed", "input": {"command": f"echo '{PROMISE}'; exit 3\nmore", "description": "d"},
        "output": f"{PROMISE}\n", "metadata": {"exit": 3}, "title": "echo"}}},
    {"type": "tool_use", "sessionID": "ses_theirs", "part": {"type": "tool", "tool": "read", "state": {
        "status": "error", "input": {"filePath": "/x"}, "error": "File not found: /x\nmore"}}},
    {"type": "tool_use", "sessionID": "ses_theirs", "part": {"type": "tool", "tool": "glob", "callID": "call_3", "state": {
        "status": "completed", "input": {"pattern": "*.py"}, "title": "src", "output": "src",
        "time": {"start": 1795606716890, "end": 1795606717140}}}},
    {"type": "step_finish", "sessionID": "ses_theirs", "part": {"type": "step-finish", "reason": "tool-calls",
     "tokens": {"total": 170, "input": 100, "output": 20, "reasoning": 5, "cache": {"write": 15, "read": 30}},
     "cost": 0.0006}},
    {"type": "text", "sessionID": "ses_theirs", "part": {"type": "text", "text": f"Done.\n{PROMISE}"}},
    {"type": "step_finish", "sessionID": "ses_theirs", "part": {"type": "step-finish", "reason": "stop",
     "tokens": {"total": 120, "input": 100, "output": 20, "reasoning": 0, "cache": {"write": 0, "read": 0}},
     "cost": 0.0004}},
    {"type": "error", "sessionID": "ses_theirs", "error": {"name": "APIError", "data": {
        "message": "rate limit exceeded", "statusCode": 429}}},
]


def test_the_parser_renders_events_and_counts_text_tokens_and_cost() -> None:
    parser = OpencodeParser(_Binding(bound=False))
    parser.report = AgentReport()
    fed = [parser.feed(json.dumps(e).encode() + b"\n") for e in EVENTS]
    shown = [display for display, _ in fed if display is not None]
    assert shown == [
        f"→ bash: $ echo '{PROMISE}'; exit 3 … (exit 3)",
        "→ read: {\"filePath\": \"/x\"} ✗ File not found: /x …",
        "→ glob: src",
        f"Done.\n{PROMISE}",
        "error: APIError: rate limit exceeded",
    ]
    # only the model's text (and errors, for retry.on_output) count: not a tool's command or output
    assert [t for _, t in fed if t is not None] == [f"Done.\n{PROMISE}", "APIError: rate limit exceeded"]
    report = parser.report
    assert report.agent_session_id == parser.binding.agent_id == "ses_theirs"
    assert (report.tokens_in, report.tokens_out) == (100 + 30 + 15 + 100, 20 + 5 + 20)
    assert report.cost_usd == pytest.approx(0.001)
    # each tool part is one ToolCall: a bash exit != 0 and a tool error fail; opencode's own times kept
    calls = parser.finish()
    assert [(c.name, c.ok, c.error) for c in calls] == [
        ("bash", False, "exit 3"), ("read", False, "File not found: /x\nmore"), ("glob", True, None)]
    assert (calls[2].call_id, calls[2].start, calls[2].end) == ("call_3", 1795606716.890, 1795606717.140)
    assert json.loads(calls[2].input or "") == {"pattern": "*.py"} and calls[2].output == "src"


def test_the_parser_notices_session_not_found_and_shows_plain_lines() -> None:
    binding = _Binding(bound=True)
    parser = OpencodeParser(binding)
    assert parser.feed(b"\x1b[91m\x1b[1mError: \x1b[0mSession not found\n") == ("Error: Session not found", None)
    assert binding.not_found
    assert parser.feed(b"\n") == (None, None)
    assert parser.feed(b"{not json\n") == ("{not json", None)
