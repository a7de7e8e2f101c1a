"""``ralph exec``, ``ralph shell`` and ``ralph env`` against sessions recorded by real runs."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from helpers import PY, ROOT, ralph, write_loop, yaml_list
from ralph.store import Store

WEIRD = 'it\'s "q" $(touch pwned) `id` \\ $HOME\nsecond line ü'
SESSION_VARS = [
    "OPENCODE_SESSION_ID",
    "RALPH_SESSION_ID",
    "OPENCODE_SESSION_TITLE",
    "RALPH_SESSION_TITLE",
    "RALPH_RUN_ID",
    "RALPH_LOOP",
    "RALPH_ITERATION",
    "RALPH_ITEM",
    "RALPH_STATE_DIR",
]
# Prints its env as JSON on stdout and exits with $EXIT_WITH.
DUMP = [
    PY,
    "-c",
    "import json, os, sys; print(json.dumps(dict(os.environ))); sys.exit(int(os.environ.get('EXIT_WITH', 0)))",
]


def run_loop(tmp_path: Path, iterations: int = 2, items: list[str] | None = None) -> list[dict]:
    """A real run; returns its sessions, oldest first."""
    batch = f"batch: {{items: {json.dumps(items)}}}" if items else ""
    loop = write_loop(
        tmp_path,
        f"""
        name: tools
        title: "Tools {{item}} #{{iteration}}"
        env: {{FROM_LOOP: {json.dumps(WEIRD)}}}
        agent: {{command: 'echo "agent of $RALPH_SESSION_ID"'}}
        until: {{max_iterations: {iterations}}}
        {batch}
    """,
    )
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    return sessions()


def sessions() -> list[dict]:
    db = sqlite3.connect(Path(os.environ["RALPH_STATE_DIR"]) / "ralph.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM sessions ORDER BY started, rowid")]
    finally:
        db.close()


def all_spans(state: Path) -> dict[str, dict]:
    """Every span in traces.jsonl (the OTLP JSON file exporter writes hex IDs), by span ID."""
    out = {}
    for line in (state / "traces.jsonl").read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
                    out[span["spanId"]] = {
                        "name": span["name"],
                        "trace_id": span["traceId"],
                        "parent_id": span.get("parentSpanId"),
                        "attributes": attrs,
                    }
    return out


def exec_env(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = ralph("exec", *args, "--", *DUMP, env=env)
    return result, json.loads(result.stdout) if result.stdout.strip() else {}


def assert_session_env(env: dict[str, str], s: dict, state: Path) -> None:
    assert env["OPENCODE_SESSION_ID"] == env["RALPH_SESSION_ID"] == s["id"]
    assert env["OPENCODE_SESSION_TITLE"] == env["RALPH_SESSION_TITLE"] == s["title"]
    assert env["RALPH_RUN_ID"] == s["run_id"]
    assert env["RALPH_LOOP"] == "tools"
    assert env["RALPH_ITERATION"] == str(s["iteration"])
    assert env["RALPH_ITEM"] == (s["item"] or "")
    assert env["RALPH_STATE_DIR"] == str(state)
    assert env["FROM_LOOP"] == WEIRD  # the loop's env:, read back from the recorded loop file
    assert f"session.id={s['id']}" in env["OTEL_RESOURCE_ATTRIBUTES"].split(",")


# -- ralph exec ------------------------------------------------------------------------------------------
def test_exec_runs_as_a_recorded_step_of_the_newest_session(tmp_path: Path, isolated: Path) -> None:
    first, newest = run_loop(tmp_path)
    result, env = exec_env(env={"EXIT_WITH": "7", "TRACEPARENT": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert result.returncode == 7, result.stderr  # CMD's own exit code
    assert result.stderr == ""
    assert_session_env(env, newest, isolated)
    assert env["RALPH_STEP"] == "exec" and env["RALPH_ATTEMPT"] == "1"

    # A new exec step span under the session's iteration span, in the same trace; the child's
    # TRACEPARENT is that new span (not the inherited one, not the iteration's).
    _, trace_id, span_id, _ = env["TRACEPARENT"].split("-")
    assert trace_id == newest["trace_id"] and span_id != newest["span_id"]
    exec_span = all_spans(isolated)[span_id]
    assert exec_span["name"] == "ralph.step" and exec_span["trace_id"] == trace_id
    assert exec_span["parent_id"] == newest["span_id"]
    attrs = exec_span["attributes"]
    assert attrs["ralph.step.kind"] == "exec" and attrs["ralph.step.name"] == "exec"
    assert attrs["session.id"] == newest["id"] and int(attrs["process.exit.code"]) == 7

    # recorded as a step of the session, with its log
    steps = Store(isolated).steps(newest["id"])
    exec_steps = [s for s in steps if s["kind"] == "exec"]
    assert len(exec_steps) == 1
    step = exec_steps[0]
    assert (step["name"], step["status"], step["exit_code"], step["span_id"]) == ("exec", "failed", 7, span_id)
    log = Path(step["log_path"])
    assert log == isolated / "logs" / newest["run_id"] / newest["id"] / "exec-1.log"
    assert json.loads(log.read_text()) == env  # the log holds exactly what the terminal got
    assert ralph("logs", newest["id"], "--step", "exec").stdout == log.read_text()
    shown = ralph("show", newest["id"]).stdout
    assert "exec   exec: failed, exit 7" in shown
    assert Store(isolated).steps(first["id"])[-1]["kind"] != "exec"

    # a second exec gets its own log
    again = ralph("exec", "--", "sh", "-c", "echo second run")
    assert again.returncode == 0 and again.stdout == "second run\n"
    assert (log.parent / "exec-2.log").read_text() == "second run\n"


def test_exec_picks_the_session_by_option_prefix_or_env(tmp_path: Path, isolated: Path) -> None:
    first, second = run_loop(tmp_path)
    _, env = exec_env("--session", first["id"])
    assert env["RALPH_SESSION_ID"] == first["id"]
    prefix = first["id"][:16]
    assert first["id"][:16] != second["id"][:16]
    _, env = exec_env("--session", prefix)
    assert env["RALPH_SESSION_ID"] == first["id"]
    _, env = exec_env(env={"RALPH_SESSION_ID": first["id"]})  # inside a session's child: that session
    assert env["RALPH_SESSION_ID"] == first["id"]
    _, env = exec_env("--session", second["id"], env={"RALPH_SESSION_ID": first["id"]})  # the option wins
    assert env["RALPH_SESSION_ID"] == second["id"]

    ambiguous = ralph("exec", "--session", "ses_", "--", "true")
    assert ambiguous.returncode == 2 and "matches more than one session" in ambiguous.stderr
    unknown = ralph("exec", "--session", "ses_nope", "--", "true")
    assert unknown.returncode == 2 and "no session 'ses_nope'" in unknown.stderr


def test_exec_from_inside_a_running_loop_joins_that_session(tmp_path: Path, isolated: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    inner = [
        PY,
        "-m",
        "ralph",
        "exec",
        "--",
        PY,
        "-c",
        "import json, os, pathlib; e = os.environ; "
        "pathlib.Path(e['DUMPS'], e['RALPH_SESSION_ID'] + '.json').write_text(json.dumps(dict(e)))",
    ]
    loop = write_loop(
        tmp_path,
        f"""
        name: inner
        env: {{DUMPS: "{dumps}", PYTHONPATH: "{ROOT}"}}
        agent: {{command: 'echo working'}}
        steps:
          after: [{{name: metrics, run: {yaml_list(inner)}}}]
        until: {{max_iterations: 2}}
    """,
    )
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = sessions()
    assert sorted(p.stem for p in dumps.iterdir()) == sorted(r["id"] for r in rows)
    for r in rows:
        env = json.loads((dumps / f"{r['id']}.json").read_text())
        assert env["RALPH_STEP"] == "exec" and env["RALPH_ITERATION"] == str(r["iteration"])
        kinds = [s["kind"] for s in Store(isolated).steps(r["id"])]
        assert kinds == ["agent", "after", "exec"]  # exec started (and was recorded) inside `metrics`


def test_exec_with_no_session_runs_with_empty_session_variables(tmp_path: Path, isolated: Path) -> None:
    result, env = exec_env(
        env={"EXIT_WITH": "3", "RALPH_SESSION_TITLE": "stale", "TRACEPARENT": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    )
    assert result.returncode == 3
    assert "warning: no session history at" in result.stderr and "empty" in result.stderr
    assert all(env[name] == "" for name in SESSION_VARS if name != "RALPH_STATE_DIR")
    assert env["RALPH_STEP"] == "exec" and "TRACEPARENT" not in env
    assert not (isolated / "ralph.db").exists()  # nothing is recorded, nothing is created

    Store(isolated).close()  # a history with no sessions in it
    result, env = exec_env()
    assert result.returncode == 0 and "warning: no sessions in" in result.stderr
    assert env["RALPH_SESSION_ID"] == ""

    run_loop(tmp_path, iterations=1)
    result, env = exec_env(env={"RALPH_SESSION_ID": "ses_gone"})
    assert result.returncode == 0 and "ses_gone ($RALPH_SESSION_ID) is not in" in result.stderr
    assert env["RALPH_SESSION_ID"] == ""


def test_exec_of_a_missing_command_exits_127(tmp_path: Path, isolated: Path) -> None:
    (newest,) = run_loop(tmp_path, iterations=1)
    result = ralph("exec", "--", "no-such-command-here")
    assert result.returncode == 127
    assert "cannot run no-such-command-here" in result.stdout
    assert [s["status"] for s in Store(isolated).steps(newest["id"]) if s["kind"] == "exec"] == ["error"]


def test_exec_keeps_the_loop_env_out_when_the_loop_file_is_gone(tmp_path: Path, isolated: Path) -> None:
    (newest,) = run_loop(tmp_path, iterations=1)
    (tmp_path / "loop.yaml").unlink()
    result, env = exec_env()
    assert result.returncode == 0
    assert "the loop's env is left out" in result.stderr
    assert "FROM_LOOP" not in env and env["RALPH_SESSION_ID"] == newest["id"]


def test_collect_metrics_example_attaches_to_the_last_session(tmp_path: Path, isolated: Path) -> None:
    _, newest = run_loop(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ralph").write_text(f'#!/bin/sh\nexec {PY} -m ralph "$@"\n')
    (bin_dir / "ralph").chmod(0o755)
    result = subprocess.run(
        [str(ROOT / "examples" / "collect-metrics.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"metrics for session {newest['id']} (Tools  #2), iteration 2" in result.stdout
    assert "agent_output_lines=1" in result.stdout
    steps = [s for s in Store(isolated).steps(newest["id"]) if s["kind"] == "exec"]
    assert len(steps) == 1 and Path(steps[0]["log_path"]).read_text() == result.stdout


# -- ralph env --------------------------------------------------------------------------------------------
def test_env_for_eval_reproduces_exact_values(tmp_path: Path, isolated: Path) -> None:
    item = WEIRD.replace("\n", " ")  # a batch item may not hold a newline (the loop's env: still does)
    (s,) = run_loop(tmp_path, iterations=1, items=[item])
    as_json = ralph("env", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    values = json.loads(as_json.stdout)
    assert values["RALPH_ITEM"] == item and values["RALPH_SESSION_TITLE"] == f"Tools {item} #1"
    assert values["FROM_LOOP"] == WEIRD
    assert values["RALPH_STEP"] == "shell"
    assert values["TRACEPARENT"] == f"00-{s['trace_id']}-{s['span_id']}-01"  # the iteration span itself

    # a real sh evals the sh format and gets exactly the same values
    script = f'eval "$({PY} -m ralph env)" && exec {PY} -c "import json, os; print(json.dumps(dict(os.environ)))"'
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "TRACESTATE": "stale=1"},
    )
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)
    assert {k: env[k] for k in values} == values
    assert_session_env(env, s, isolated)
    assert "TRACESTATE" not in env  # an inherited trace context that is not the session's is dropped
    assert not (tmp_path / "pwned").exists()


def test_env_with_no_session_sets_the_variables_empty(tmp_path: Path, isolated: Path) -> None:
    result = ralph("env")
    assert result.returncode == 0
    assert "warning: no session history" in result.stderr
    assert "export RALPH_SESSION_ID=''" in result.stdout.splitlines()
    assert "unset TRACEPARENT TRACESTATE" in result.stdout.splitlines()
    bad = ralph("env", "--format", "yaml")
    assert bad.returncode == 2 and "--format 'yaml'" in bad.stderr


# -- ralph shell ------------------------------------------------------------------------------------------
def test_shell_runs_shell_in_the_session_env(tmp_path: Path, isolated: Path) -> None:
    _, newest = run_loop(tmp_path)
    result = ralph(
        "shell", input='printf "in %s: %s\\n" "$RALPH_SESSION_ID" "$FROM_LOOP"; exit 4\n', env={"SHELL": "/bin/sh"}
    )
    assert result.returncode == 4  # the shell's own exit status
    assert result.stdout == f"in {newest['id']}: {WEIRD}\n"
    assert f"shell in session {newest['id']}" in result.stderr

    env = {k: v for k, v in os.environ.items() if k != "SHELL"}  # no $SHELL: /bin/sh
    result = subprocess.run(
        [PY, "-m", "ralph", "shell"], input="echo $RALPH_STEP\n", capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0 and result.stdout == "shell\n"
    missing = ralph("shell", env={"SHELL": "/no/such/shell"})
    assert missing.returncode == 127 and "cannot run the shell" in missing.stderr


def test_shell_is_interactive_on_a_terminal(tmp_path: Path, isolated: Path) -> None:
    _, newest = run_loop(tmp_path)
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [PY, "-m", "ralph", "shell"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "SHELL": "/bin/sh", "PS1": "$ "},
        close_fds=True,
    )
    os.close(slave)
    seen = b""

    def read_until(needle: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while needle not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    return

    try:
        read_until(b"exit to leave")
        os.write(master, b'test -t 0 && echo "tty ok $OPENCODE_SESSION_ID"\n')
        read_until(f"tty ok {newest['id']}".encode())
        os.write(master, b"exit 5\n")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert f"tty ok {newest['id']}".encode() in seen, seen
    assert proc.returncode == 5


@pytest.mark.parametrize("command", ["exec", "shell", "env"])
def test_ambiguous_prefix_is_a_usage_error(tmp_path: Path, isolated: Path, command: str) -> None:
    run_loop(tmp_path)
    args = [command, "--session", "ses_"] + (["--", "true"] if command == "exec" else [])
    result = ralph(*args)
    assert result.returncode == 2 and "matches more than one session" in result.stderr


def test_exec_passes_ctrl_c_on_and_records_the_step_interrupted(tmp_path: Path, isolated: Path) -> None:
    (newest,) = run_loop(tmp_path, iterations=1)
    started = tmp_path / "started"
    child = (
        # The marker is touched inside the try, so a SIGINT right after the handshake is still caught.
        "import pathlib, sys, time\n"
        "try:\n    print('waiting', flush=True); pathlib.Path(sys.argv[1]).touch(); time.sleep(600)\n"
        "except KeyboardInterrupt:\n    print('got SIGINT', flush=True); sys.exit(130)"
    )
    proc = subprocess.Popen(
        [PY, "-m", "ralph", "exec", "--", PY, "-c", child, str(started)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert out == "waiting\ngot SIGINT\n"  # the command's own output, streamed as it came
    (step,) = [s for s in Store(isolated).steps(newest["id"]) if s["kind"] == "exec"]
    assert step["status"] == "interrupted" and step["exit_code"] == 130
