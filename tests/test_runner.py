"""The loop end to end through the real CLI: what every child sees, stop conditions, exit codes."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from helpers import DUMP_ENV, PY, ralph, read_dumps, write_loop, yaml_list
from ralph.session import SESSION_ID_RE

SESSION_VARS = {
    "OPENCODE_SESSION_ID", "RALPH_SESSION_ID", "OPENCODE_SESSION_TITLE", "RALPH_SESSION_TITLE", "RALPH_RUN_ID",
    "RALPH_LOOP", "RALPH_ITERATION", "RALPH_ATTEMPT", "RALPH_STEP", "RALPH_ITEM", "RALPH_STATE_DIR",
    "TRACEPARENT", "OTEL_RESOURCE_ATTRIBUTES",
}


def db_rows(state: Path, sql: str) -> list[dict]:
    db = sqlite3.connect(state / "ralph.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    finally:
        db.close()


def test_exact_env_of_before_agent_after_and_check(tmp_path: Path, isolated: Path) -> None:
    dumps = tmp_path / "dumps"
    (tmp_path / "work").mkdir()
    dump = yaml_list(DUMP_ENV)
    fail_check = yaml_list([*DUMP_ENV[:2], DUMP_ENV[2] + "; raise SystemExit(1)"])
    loop = write_loop(tmp_path, f"""
        name: env-check
        title: "Fix {{loop}} #{{iteration}} $(touch pwned) `id` 'q' \\"dq\\" ü"
        workdir: work
        env: {{ENV_DUMP_DIR: "{dumps}", FROM_LOOP: "loop value"}}
        agent:
          command: {dump}
          prompt: "Do {{loop}} #{{iteration}} {{unknown}}"
        steps:
          before: [{{name: prep, run: {dump}}}]
          after: [{{name: report, run: {dump}}}]
        until:
          max_iterations: 2
          command_succeeds: {fail_check}
    """)
    result = ralph("run", str(loop), env={"INHERITED": "yes", "OTEL_RESOURCE_ATTRIBUTES": "team=core"})
    assert result.returncode == 1, result.stdout + result.stderr  # the check never passes
    seen = read_dumps(dumps)
    assert sorted(seen) == sorted(f"{s}---{i}-1" for s in ("prep", "agent", "report", "check") for i in (1, 2))
    runs = db_rows(isolated, "SELECT * FROM runs")
    assert len(runs) == 1
    sessions = {r["iteration"]: r for r in db_rows(isolated, "SELECT * FROM sessions")}
    trace_ids = set()
    for i in (1, 2):
        sid = sessions[i]["id"]
        assert SESSION_ID_RE.match(sid)
        title = f"Fix env-check #{i} $(touch pwned) `id` 'q' \"dq\" ü"
        assert sessions[i]["title"] == title
        parents = set()
        for step in ("prep", "agent", "report", "check"):
            env = seen[f"{step}---{i}-1"]
            assert set(env) >= SESSION_VARS, step
            assert env["OPENCODE_SESSION_ID"] == env["RALPH_SESSION_ID"] == sid
            assert env["OPENCODE_SESSION_TITLE"] == env["RALPH_SESSION_TITLE"] == title
            assert env["RALPH_RUN_ID"] == runs[0]["id"]
            assert env["RALPH_LOOP"] == "env-check"
            assert env["RALPH_ITERATION"] == str(i)
            assert env["RALPH_ATTEMPT"] == "1"
            assert env["RALPH_STEP"] == step
            assert env["RALPH_ITEM"] == ""
            assert env["RALPH_STATE_DIR"] == str(isolated) and Path(env["RALPH_STATE_DIR"]).is_absolute()
            assert env["OTEL_RESOURCE_ATTRIBUTES"] == f"team=core,session.id={sid}"
            assert env["INHERITED"] == "yes" and env["FROM_LOOP"] == "loop value"
            assert env["__cwd__"] == env["PWD"] == str((tmp_path / "work").resolve())
            tp = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", env["TRACEPARENT"])
            assert tp, env["TRACEPARENT"]
            trace_ids.add(tp.group(1))
            parents.add(tp.group(2))
            expected_stdin = f"Do env-check #{i} {{unknown}}" if step == "agent" else ""
            assert env["__stdin__"] == expected_stdin
        assert len(parents) == 4  # each step has its own span
    assert len(trace_ids) == 1  # one trace per run
    assert sessions[1]["id"] != sessions[2]["id"]
    assert sessions[2]["previous_id"] == sessions[1]["id"]
    assert not (tmp_path / "work" / "pwned").exists()


def _loop(tmp_path: Path, agent: str, until: str, extra: str = "") -> Path:
    return write_loop(tmp_path, f"""
        name: stops
        agent:
          command: {agent}
        until:
{until}
{extra}
    """)


def _count(path: Path) -> str:
    """A shell agent that counts its iterations in a file and prints the count."""
    return f"'n=$(cat {path} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {path}; echo iteration $n'"


def statuses(state: Path) -> list[str]:
    return [r["status"] for r in db_rows(state, "SELECT status FROM sessions ORDER BY iteration")]


def test_max_iterations_without_success_condition_exits_0(tmp_path: Path, isolated: Path) -> None:
    result = ralph("run", str(_loop(tmp_path, "'true'", "          max_iterations: 3")))
    assert result.returncode == 0, result.stderr
    assert statuses(isolated) == ["ok", "ok", "ok"]


def test_last_iteration_failing_without_success_condition_exits_1(tmp_path: Path, isolated: Path) -> None:
    agent = f"'{_count(tmp_path / 'n')[1:-1]}; [ $n -lt 2 ]'"
    result = ralph("run", str(_loop(tmp_path, agent, "          max_iterations: 2")))
    assert result.returncode == 1
    assert statuses(isolated) == ["ok", "failed"]


def test_output_contains_ends_the_loop(tmp_path: Path, isolated: Path) -> None:
    agent = f"'{_count(tmp_path / 'n')[1:-1]}; [ $n -eq 2 ] && echo \"<promise>DONE</promise>\"; true'"
    result = ralph("run", str(_loop(tmp_path, agent, "          max_iterations: 5\n"
                                    "          output_contains: <promise>DONE</promise>")))
    assert result.returncode == 0, result.stdout
    assert statuses(isolated) == ["ok", "complete"]


def test_output_contains_not_seen_exits_1(tmp_path: Path, isolated: Path) -> None:
    result = ralph("run", str(_loop(tmp_path, "'echo nope'", "          max_iterations: 2\n"
                                    "          output_contains: DONE")))
    assert result.returncode == 1
    assert "max_iterations (2) reached" in result.stdout


def test_command_succeeds_ends_the_loop(tmp_path: Path, isolated: Path) -> None:
    agent = _count(tmp_path / "n")
    check = f"'[ $(cat {tmp_path / 'n'}) -ge 3 ]'"
    result = ralph("run", str(_loop(tmp_path, agent, f"          max_iterations: 5\n          command_succeeds: {check}")))
    assert result.returncode == 0, result.stdout
    assert statuses(isolated) == ["ok", "ok", "complete"]
    steps = db_rows(isolated, "SELECT name, kind, status, exit_code FROM steps ORDER BY id")
    assert [(s["name"], s["exit_code"]) for s in steps] == [("agent", 0), ("check", 1)] * 2 + [("agent", 0), ("check", 0)]


def test_max_consecutive_failures(tmp_path: Path, isolated: Path) -> None:
    result = ralph("run", str(_loop(tmp_path, "'exit 4'", "          max_iterations: 10\n"
                                    "          max_consecutive_failures: 3")))
    assert result.returncode == 1
    assert statuses(isolated) == ["failed"] * 3
    assert "3 consecutive failed iterations" in result.stdout


def test_max_duration_ends_a_running_agent(tmp_path: Path, isolated: Path) -> None:
    result = ralph("run", str(_loop(tmp_path, f"[{json.dumps(PY)}, '-c', 'import time; time.sleep(60)']",
                                    "          max_iterations: 10\n          max_duration: 1s")))
    assert result.returncode == 1
    assert statuses(isolated) == ["timeout"]
    assert "max_duration reached" in result.stdout


def test_max_iterations_option_overrides_the_file(tmp_path: Path, isolated: Path) -> None:
    result = ralph("run", str(_loop(tmp_path, "'true'", "          max_iterations: 10")), "--max-iterations", "2")
    assert result.returncode == 0
    assert len(statuses(isolated)) == 2


def test_continue_on_error_and_failing_steps(tmp_path: Path, isolated: Path) -> None:
    marker = tmp_path / "agent-ran"
    loop = write_loop(tmp_path, f"""
        name: steps
        agent: {{command: "touch {marker}"}}
        steps:
          before: [{{name: lenient, run: "exit 3", continue_on_error: true}}]
          after: [{{name: strict, run: "exit 5"}}]
        until: {{max_iterations: 1}}
    """)
    result = ralph("run", str(loop))
    assert result.returncode == 1  # the strict after step failed the only iteration
    assert marker.exists()
    steps = db_rows(isolated, "SELECT name, kind, status, exit_code FROM steps ORDER BY id")
    assert steps == [{"name": "lenient", "kind": "before", "status": "failed", "exit_code": 3},
                     {"name": "agent", "kind": "agent", "status": "ok", "exit_code": 0},
                     {"name": "strict", "kind": "after", "status": "failed", "exit_code": 5}]


def test_failing_before_step_skips_the_agent(tmp_path: Path, isolated: Path) -> None:
    marker = tmp_path / "agent-ran"
    loop = write_loop(tmp_path, f"""
        name: steps
        agent: {{command: "touch {marker}"}}
        steps:
          before: [{{name: sync, run: "exit 1"}}]
          after: [{{name: always, run: "true"}}]
        until: {{max_iterations: 1}}
    """)
    assert ralph("run", str(loop)).returncode == 1
    assert not marker.exists()
    assert [s["name"] for s in db_rows(isolated, "SELECT name FROM steps ORDER BY id")] == ["sync", "always"]


def test_promise_after_400_mib_is_seen_in_bounded_memory(tmp_path: Path, isolated: Path) -> None:
    # 4 MiB blocks of 100-byte lines, 100 times, then the promise: the runner must not hold the output.
    agent = [PY, "-c", (
        "import sys; line = b'x' * 99 + b'\\n'; block = line * (4 * 1024 * 1024 // 100); w = sys.stdout.buffer.write\n"
        "for _ in range(100): w(block)\n"
        "w(b'<promise>COMPLETE</promise>\\n')"
    )]
    loop = write_loop(tmp_path, f"""
        name: big
        agent: {{command: {yaml_list(agent)}}}
        until: {{max_iterations: 2, output_contains: "<promise>COMPLETE</promise>"}}
    """)
    probe = [PY, "-c", (
        "import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'ralph', 'run', sys.argv[1], "
        "'--quiet']); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    ), str(loop)]
    import subprocess

    out = subprocess.run(probe, capture_output=True, text=True, timeout=600, check=True).stdout.split()[-2:]
    code, max_rss_kib = int(out[0]), int(out[1])
    assert code == 0
    log = next((isolated / "logs").glob("run_*/ses_*/agent.log"))
    assert log.stat().st_size == 100 * (4 * 1024 * 1024 // 100) * 100 + len("<promise>COMPLETE</promise>\n")
    assert max_rss_kib < 100 * 1024, f"peak RSS {max_rss_kib} KiB"


def test_console_output_is_prefixed_with_a_header_per_iteration(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, """
        name: console
        title: "T {iteration}"
        agent: {command: "printf 'one\\ntwo\\n'; echo err >&2"}
        until: {max_iterations: 2}
    """)
    result = ralph("run", str(loop))
    assert result.returncode == 0
    ids = [r["id"] for r in db_rows(isolated, "SELECT id FROM sessions ORDER BY iteration")]
    lines = result.stdout.splitlines()
    assert f"── iteration 1 · {ids[0]} · T 1" in lines
    assert f"── iteration 2 · {ids[1]} · T 2" in lines
    assert [ln for ln in lines if ln.startswith("[2 agent] ")][:3] == ["[2 agent] one", "[2 agent] two", "[2 agent] err"]
    quiet = ralph("run", str(loop), "--quiet")
    assert quiet.returncode == 0 and "one" not in quiet.stdout


def test_json_mode_prints_one_event_per_line(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, """
        name: js
        agent: {command: "echo hello"}
        until: {max_iterations: 1}
    """)
    result = ralph("run", str(loop), "--json")
    assert result.returncode == 0
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds == ["run.start", "iteration.start", "output", "step.end", "iteration.end", "run.end"]
    assert events[2]["line"] == "hello" and events[2]["session_id"] == events[1]["session_id"]
    assert events[-1]["exit_code"] == 0


def test_history_logs_and_runner_records(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, """
        name: hist
        agent: {command: "echo out-$RALPH_ITERATION"}
        steps: {after: [{name: post, run: "echo post"}]}
        until: {max_iterations: 2}
    """)
    assert ralph("run", str(loop)).returncode == 0
    run = db_rows(isolated, "SELECT * FROM runs")[0]
    assert run["status"] == "ok" and run["exit_code"] == 0 and run["ended"] >= run["started"]
    for s in db_rows(isolated, "SELECT * FROM sessions"):
        assert s["run_id"] == run["id"] and s["loop"] == "hist" and s["status"] == "ok"
        logdir = isolated / "logs" / run["id"] / s["id"]
        assert (logdir / "agent.log").read_text() == f"out-{s['iteration']}\n"
        assert (logdir / "post.log").read_text() == "post\n"
    steps = db_rows(isolated, "SELECT * FROM steps")
    assert all(Path(s["log_path"]).exists() and s["ended"] >= s["started"] for s in steps)
    records = [json.loads(x) for x in (isolated / "logs" / run["id"] / "ralph.jsonl").read_text().splitlines()]
    assert records and all(r["run_id"] == run["id"] for r in records)
    it = [r for r in records if r["message"] == "iteration started"]
    assert [r["iteration"] for r in it] == [1, 2] and all(SESSION_ID_RE.match(r["session_id"]) for r in it)
    assert all(r["trace_id"] and r["span_id"] for r in records)
    mode = {p: oct(p.stat().st_mode & 0o777) for p in [isolated, isolated / "ralph.db", isolated / "logs"]}
    assert mode == {isolated: "0o700", isolated / "ralph.db": "0o600", isolated / "logs": "0o700"}


@pytest.mark.parametrize("command", [["sh", "-c", "printf '%s|' \"$@\"", "x"], "printf '%s|' first"])
def test_string_and_list_commands_and_args(tmp_path: Path, isolated: Path, command: object) -> None:
    loop = write_loop(tmp_path, f"""
        name: argv
        agent:
          command: {json.dumps(command)}
          args: ["a b", "$(c)"]
        until: {{max_iterations: 1}}
    """)
    result = ralph("run", str(loop))
    assert result.returncode == 0
    log = next((isolated / "logs").glob("run_*/ses_*/agent.log")).read_text()
    assert log == ("a b|$(c)|" if isinstance(command, list) else "first|a b|$(c)|")


def test_a_session_folder_per_session_and_none_more(tmp_path: Path, isolated: Path) -> None:
    # Each iteration's folder is made while its first child runs: a loop that stops early (its promise)
    # leaves none for an iteration that did not come.
    for name, until in (("full", "{max_iterations: 3}"), ("early", '{max_iterations: 5, output_contains: "DONE"}')):
        agent = [PY, "-c", "import os; print('DONE' if os.environ['RALPH_ITERATION'] == '2' else 'more')"]
        loop = write_loop(tmp_path, f"name: {name}\nagent: {{command: {yaml_list(agent)}}}\nuntil: {until}\n",
                          name=f"{name}.yaml")
        assert ralph("run", str(loop)).returncode == 0
        (run,) = db_rows(isolated, f"SELECT id FROM runs WHERE loop = '{name}'")
        sessions = {r["id"] for r in db_rows(isolated, f"SELECT id FROM sessions WHERE run_id = '{run['id']}'")}
        assert len(sessions) == (3 if name == "full" else 2)
        folders = {p.name for p in (isolated / "logs" / run["id"]).iterdir() if p.is_dir()}
        assert folders == sessions
