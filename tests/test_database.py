"""Choosing the history's database (``--db``, ``$RALPH_DATABASE_URL``, else SQLite), what a bad or
unusable URL does (one line, exit 2, nothing run), the history commands over PostgreSQL, and a
database that goes away mid-run (a throwaway server stopped with ``pg_ctl stop -m fast``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from handshake import PY, wait_for, wait_for_text

from helpers import python, ralph, write_loop, yaml_list
from tests.support.postgres import PASSWORD, running_server

MARK_AGENT = [PY, "-c", "import os, pathlib; pathlib.Path(os.environ['MARK']).touch(); print('agent ran')"]


def marking_loop(tmp_path: Path) -> Path:
    """A batch loop whose items_command and agent both leave a mark: a refused URL must run neither."""
    return write_loop(tmp_path, f"""
        name: marks
        env: {{MARK: "{tmp_path / 'agent-ran'}"}}
        agent: {{command: {yaml_list(MARK_AGENT)}}}
        until: {{max_iterations: 1}}
        batch: {{items_command: "touch {tmp_path / 'items-ran'}; echo one"}}
        """)


@pytest.mark.parametrize("kind", ["password", "port", "scheme", "garbage"])
def test_a_bad_url_or_credentials_is_one_line_and_exit_2_with_nothing_run(
        kind: str, tmp_path: Path, postgres_server: object) -> None:
    good = postgres_server.url  # type: ignore[attr-defined]
    url = {"password": good.replace(PASSWORD, "wrong-password"),
           "port": "postgresql://postgres:x@127.0.0.1:1/postgres",
           "scheme": "mysql://root@127.0.0.1/ralph",
           "garbage": "postgresql://postgres@127.0.0.1:99999999/x"}[kind]
    proc = ralph("run", str(marking_loop(tmp_path)), "--db", url)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    message = {"scheme": "unsupported history database"}.get(kind, "cannot connect to the history database")
    assert lines[0].startswith(f"ralph: {message}"), lines[0]
    assert "wrong-password" not in lines[0] and PASSWORD not in lines[0]
    assert not (tmp_path / "items-ran").exists() and not (tmp_path / "agent-ran").exists()
    env_too = ralph("sessions", env={"RALPH_DATABASE_URL": url})
    assert env_too.returncode == 2 and env_too.stderr.count("\n") == 1


def test_a_postgresql_url_without_psycopg_says_what_to_install(tmp_path: Path) -> None:
    loop_file = marking_loop(tmp_path)
    proc = python("import sys\nsys.modules['psycopg'] = None  # as if it were not installed\n"
                  "from ralph.cli import main\n"
                  f"sys.argv = ['ralph', 'run', {str(loop_file)!r}, '--db', 'postgresql://u@127.0.0.1/db']\nmain()\n")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "ralph: a PostgreSQL history needs psycopg: pip install 'ralph-loops[postgres]'"
    assert not (tmp_path / "agent-ran").exists()


def test_the_history_commands_read_and_write_postgresql(tmp_path: Path, postgres_url: str, isolated: Path) -> None:
    loop_file = write_loop(tmp_path, """
        name: pg
        agent: {command: ["sh", "-c", "echo from the agent: $RALPH_ITERATION"]}
        until: {max_iterations: 2}
        """)
    env = {"RALPH_DATABASE_URL": postgres_url}
    run = ralph("run", str(loop_file), "-q", env=env)
    assert run.returncode == 0, run.stderr
    assert not (isolated / "ralph.db").exists() and (isolated / "logs").is_dir()
    listing = ralph("sessions", "--json", env=env)
    rows = json.loads(listing.stdout)
    assert [r["iteration"] for r in rows] == [2, 1] and {r["host"] for r in rows} == {os.uname().nodename}
    # --db wins over the environment; without either, the (empty) SQLite history of the folder.
    assert ralph("sessions", "--json", "--db", postgres_url).stdout == listing.stdout
    assert ralph("sessions", "--json").stdout.strip() == "[]"
    session = rows[0]["id"]
    shown = ralph("show", session, "--db", postgres_url)
    assert shown.returncode == 0 and f"session {session}" in shown.stdout, shown.stderr
    logs = ralph("logs", session, "--db", postgres_url)
    assert logs.stdout == "from the agent: 2\n", logs.stderr
    done = ralph("exec", "--db", postgres_url, "--session", session, "--", "sh", "-c", "echo $RALPH_SESSION_ID")
    assert done.returncode == 0 and done.stdout.strip() == session
    steps = json.loads(ralph("show", session, "--json", env=env).stdout)["steps"]
    assert [s["kind"] for s in steps] == ["agent", "exec"]
    printed = ralph("env", "--format", "json", "--session", session, env=env)
    assert json.loads(printed.stdout)["RALPH_SESSION_ID"] == session


# Iteration 1 touches DIR/ready and waits for DIR/go (the test stops the server in between).
WAITING_AGENT = [PY, "-c", r"""
import os, pathlib, time
d = pathlib.Path(os.environ['DIR'])
if os.environ['RALPH_ITERATION'] == '1':
    (d / 'ready').touch()
    while not (d / 'go').exists():
        time.sleep(0.01)
print('iteration', os.environ['RALPH_ITERATION'], 'finished')
"""]


@pytest.mark.slow
@pytest.mark.parametrize("comes_back", [True, False])
def test_the_database_going_away_mid_run(comes_back: bool, tmp_path: Path, isolated: Path) -> None:
    """The iteration in flight finishes, ralph says it is retrying; the run goes on when the server
    is back, and ends with a clear error when it stays gone. The logs are kept either way."""
    loop_file = write_loop(tmp_path, f"""
        name: outage
        env: {{DIR: "{tmp_path}"}}
        agent: {{command: {yaml_list(WAITING_AGENT)}}}
        until: {{max_iterations: 2}}
        """)
    with running_server() as server:
        stderr = tmp_path / "stderr"
        env = {**os.environ, "RALPH_DATABASE_URL": server.url, "RALPH_DATABASE_RETRY": "60" if comes_back else "2"}
        with stderr.open("w") as err:
            proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop_file), "-q"], env=env, stderr=err,
                                    stdout=subprocess.DEVNULL)
            wait_for(tmp_path / "ready")
            server.stop("fast")
            (tmp_path / "go").touch()
            wait_for_text(stderr, "lost the history database")
            if comes_back:
                server.start()
            proc.wait(timeout=120)
        text = stderr.read_text()
        assert f":{PASSWORD}@" not in text
        logs = sorted(isolated.glob("logs/run_*/ses_*/agent.log"))
        assert logs and logs[0].read_text() == "iteration 1 finished\n"  # nothing lost locally
        if comes_back:
            assert proc.returncode == 0, text
            assert "reconnected to the history database" in text
            import psycopg

            with psycopg.connect(server.url) as conn:
                got = conn.execute("SELECT iteration, status FROM sessions ORDER BY iteration").fetchall()
            assert got == [(1, "ok"), (2, "ok")]
        else:
            assert proc.returncode == 1, text
            assert "stayed unreachable for 2s" in text.strip().splitlines()[-1]
            assert len(logs) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sessions_show_the_host_once_a_history_has_two_and_logs_name_it(
        backend: str, tmp_path: Path, isolated: Path, request: pytest.FixtureRequest) -> None:
    from ralph.store import Store

    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    env = {"RALPH_DATABASE_URL": url} if url else {}
    loop_file = write_loop(tmp_path, """
        name: hosts
        agent: {command: "echo hello"}
        until: {max_iterations: 1}
        """)
    assert ralph("run", str(loop_file), "-q", env=env).returncode == 0
    header = ralph("sessions", env=env).stdout.splitlines()[0]
    assert ("host" in header) == (backend == "postgresql")  # SQLite, one host: no column
    # A run recorded by another machine (its logs are there, not here).
    store = Store(isolated, url=url)
    store.start_run("run_elsewhere", "hosts", None)
    store.update_run("run_elsewhere", host="build-7")
    store.start_session(id="ses_elsewhere", run_id="run_elsewhere", loop="hosts", title="far", iteration=1)
    step = store.start_step(session_id="ses_elsewhere", run_id="run_elsewhere", name="agent", kind="agent", attempt=1,
                            log_path="/nonexistent/logs/agent.log")
    store.finish_step(step, "ok", 0)
    store.finish_session("ses_elsewhere", "ok")
    store.close()
    listing = ralph("sessions", env=env).stdout.splitlines()
    assert "host" in listing[0]
    assert [line.split()[-1] for line in listing[1:]] == ["build-7", os.uname().nodename]
    logs = ralph("logs", "ses_elsewhere", env=env)
    assert logs.returncode == 0 and logs.stdout == ""
    assert logs.stderr.strip() == ("ralph: /nonexistent/logs/agent.log is on host build-7, which ran session "
                                   "ses_elsewhere")
    shown = ralph("show", "run_elsewhere", env=env)
    assert "host build-7" in shown.stdout.splitlines()[0]


def test_a_run_given_db_hands_it_to_its_children(tmp_path: Path, postgres_url: str) -> None:
    """The agent's own ``ralph exec`` records into the history the run was given with --db."""
    loop_file = write_loop(tmp_path, f"""
        name: inner
        agent: {{command: {yaml_list([PY, "-m", "ralph", "exec", "--", "sh", "-c", "echo inner"])}}}
        until: {{max_iterations: 1}}
        """)
    run = ralph("run", str(loop_file), "-q", "--db", postgres_url)
    assert run.returncode == 0, run.stderr
    (session,) = json.loads(ralph("sessions", "--json", "--db", postgres_url).stdout)
    steps = json.loads(ralph("show", session["id"], "--json", "--db", postgres_url).stdout)["steps"]
    assert [s["kind"] for s in steps] == ["agent", "exec"]
