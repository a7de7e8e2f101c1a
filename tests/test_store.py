"""The history: a real SQLite file, shared by concurrent ralph processes and a batch's parallel items
without corruption or lock-outs; upgrades, abandoned runs, resume points, private files."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from handshake import PY, db_rows, wait_for

from helpers import V2_TABLES, ralph, write_loop, yaml_list
from ralph.errors import StateError, UsageError
from ralph.store import SCHEMA_VERSION, Store


def test_a_fresh_history_is_private_and_in_wal_mode(isolated: Path) -> None:
    store = Store(isolated)
    store.start_run("run_1", "demo", None)
    store.close()
    assert oct((isolated / "ralph.db").stat().st_mode & 0o777) == oct(0o600)
    assert oct(isolated.stat().st_mode & 0o777) == oct(0o700)
    assert oct((isolated / "logs").stat().st_mode & 0o777) == oct(0o700)
    assert db_rows(isolated, "PRAGMA journal_mode") == [{"journal_mode": "wal"}]


def test_a_version_1_history_is_upgraded_in_place(isolated: Path) -> None:
    isolated.mkdir(mode=0o700)
    db = sqlite3.connect(isolated / "ralph.db")
    db.executescript("""
        CREATE TABLE runs (id TEXT PRIMARY KEY, loop TEXT NOT NULL, loop_file TEXT, status TEXT NOT NULL,
            exit_code INTEGER, started REAL NOT NULL, ended REAL, host TEXT, pid INTEGER, pid_start TEXT,
            trace_id TEXT, span_id TEXT, batch TEXT, shard TEXT, resumed_from TEXT);
        CREATE TABLE sessions (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, loop TEXT NOT NULL, title TEXT NOT NULL,
            iteration INTEGER NOT NULL, item TEXT, status TEXT NOT NULL, started REAL NOT NULL, ended REAL,
            previous_id TEXT, trace_id TEXT, span_id TEXT, agent_session_id TEXT, tokens_in INTEGER,
            tokens_out INTEGER, cost_usd REAL, reason TEXT);
        CREATE TABLE steps (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, run_id TEXT NOT NULL,
            name TEXT NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
            exit_code INTEGER, pid INTEGER, started REAL NOT NULL, ended REAL, log_path TEXT, span_id TEXT,
            reason TEXT);
        INSERT INTO steps (session_id, run_id, name, kind, attempt, status, started) VALUES
            ('ses_old', 'run_old', 'agent', 'agent', 1, 'ok', 1.0);
        PRAGMA user_version = 1;
    """)
    db.close()
    store = Store(isolated)
    store.start_step(os.getpid(), session_id="ses_1", run_id="run_1", name="agent", kind="agent", attempt=1)
    store.close()
    assert db_rows(isolated, "PRAGMA user_version") == [{"user_version": SCHEMA_VERSION}]
    assert db_rows(isolated, "SELECT files_changed, git_branch FROM sessions") == []  # version 3's columns
    rows = db_rows(isolated, "SELECT session_id, pid_start FROM steps ORDER BY id")
    assert rows[0] == {"session_id": "ses_old", "pid_start": None}
    assert rows[1]["pid_start"] is not None
    # Migration 4 (loop judgement): why a run stopped, a session's fingerprint and feedback.
    assert db_rows(isolated, "SELECT stop_reason FROM runs") == []
    assert db_rows(isolated, "SELECT fingerprint, feedback FROM sessions") == []


def test_a_version_2_history_gets_the_judgement_columns(isolated: Path) -> None:
    isolated.mkdir(mode=0o700)
    db = sqlite3.connect(isolated / "ralph.db")
    db.executescript(V2_TABLES + "PRAGMA user_version = 2;")
    db.close()
    store = Store(isolated)
    store.start_run("run_new", "l", None)
    store.finish_run("run_new", "failed", 1, "same_failure")
    store.close()
    assert db_rows(isolated, "SELECT id, stop_reason FROM runs ORDER BY started") == [
        {"id": "run_old", "stop_reason": None}, {"id": "run_new", "stop_reason": "same_failure"}]


def test_a_corrupt_history_is_a_clear_state_error(isolated: Path) -> None:
    isolated.mkdir(mode=0o700)
    (isolated / "ralph.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=r"cannot use the history .*ralph\.db"):
        Store(isolated)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, isolated: Path) -> Iterator[Store]:
    """The same interface tests against both backends: ralph.db in the state folder, and a private
    schema of the throwaway PostgreSQL server (tests/support/postgres.py)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    opened = Store(isolated, url=url)
    assert type(opened).__name__ == ("PostgresStore" if url else "SqliteStore")
    yield opened
    opened.close()


def rows(store: Store, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return store._query(sql, args)


def test_mark_abandoned_leaves_live_runs_and_other_hosts_alone(store: Store) -> None:
    store.start_run("run_live", "demo", None)  # this process: alive
    store.start_run("run_dead", "demo", None)
    store.start_run("run_away", "demo", None)
    # A PID that exited, and a run on another machine we cannot check.
    dead_pid = subprocess.Popen(["/bin/true"])
    dead_pid.wait()
    store.update_run("run_dead", pid=dead_pid.pid)
    store.update_run("run_away", pid=dead_pid.pid, host=socket.gethostname() + "-elsewhere")
    store.start_session(id="ses_1", run_id="run_dead", loop="demo", title="t", iteration=1)
    step = store.step_id(store.start_step(session_id="ses_1", run_id="run_dead", name="agent", kind="agent",
                                          attempt=1))
    assert step > 0
    assert store.mark_abandoned() == ["run_dead"]
    status = {r["id"]: r["status"] for r in rows(store, "SELECT id, status FROM runs")}
    assert status == {"run_live": "running", "run_dead": "abandoned", "run_away": "running"}
    assert rows(store, "SELECT status FROM sessions") == [{"status": "abandoned"}]
    assert rows(store, "SELECT status FROM steps WHERE id = ?", (step,)) == [{"status": "abandoned"}]
    assert store.mark_abandoned() == []
    assert store.hosts() == 2


def test_finish_run_closes_what_the_run_left_running(store: Store) -> None:
    store.start_run("run_1", "demo", None)
    store.start_session(id="ses_1", run_id="run_1", loop="demo", title="t", iteration=1)
    store.start_step(session_id="ses_1", run_id="run_1", name="agent", kind="agent", attempt=1)
    store.finish_run("run_1", "error", 3)
    assert rows(store, "SELECT status FROM sessions") == [{"status": "error"}]
    assert rows(store, "SELECT status FROM steps") == [{"status": "error"}]
    assert rows(store, "SELECT status, exit_code FROM runs") == [{"status": "error", "exit_code": 3}]


def test_resume_points_follow_the_chain_of_resumed_runs(store: Store) -> None:
    store.start_run("run_a", "demo", None)
    for n, status, cost in ((1, "ok", 0.5), (2, "abandoned", 0.25)):
        store.start_session(id=f"ses_a{n}", run_id="run_a", loop="demo", title="t", iteration=n)
        store.finish_session(f"ses_a{n}", status, cost_usd=cost)
    store.finish_run("run_a", "abandoned", 1)
    assert store.unfinished_run("demo")["id"] == "run_a"  # type: ignore[index]
    store.start_run("run_b", "demo", None, resumed_from="run_a")
    store.start_session(id="ses_b3", run_id="run_b", loop="demo", title="t", iteration=3)
    store.finish_session("ses_b3", "failed")
    store.finish_run("run_b", "interrupted", 130)
    # run_a was resumed by run_b: only run_b is left to resume, and it carries run_a's history.
    assert store.unfinished_run("demo")["id"] == "run_b"  # type: ignore[index]
    (point,) = store.resume_points("run_b").values()
    assert (point.last_iteration, point.last_session_id, point.finished, point.cost, point.complete) == (
        3,
        "ses_b3",
        2,
        0.75,
        False,
    )
    assert store.unfinished_run("other") is None


# -- concurrency, with real processes -----------------------------------------------------------

# Iteration 1 touches DIR/<loop>-<item>.started and waits for DIR/go, so the test knows every
# writer is mid-run at once; the other iterations just print.
AGENT = [
    PY,
    "-c",
    (
        "import os, pathlib, time\n"
        "d = pathlib.Path(os.environ['BARRIER'])\n"
        "if os.environ['RALPH_ITERATION'] == '1':\n"
        "    (d / f\"{os.environ['RALPH_LOOP']}-{os.environ['RALPH_ITEM'] or 'x'}.started\").touch()\n"
        "    while not (d / 'go').exists(): time.sleep(0.005)\n"
        "print('working on', os.environ['RALPH_ITEM'] or os.environ['RALPH_LOOP'], flush=True)\n"
    ),
]


def busy_loop(tmp_path: Path, name: str, barrier: Path, iterations: int, batch: str = "") -> Path:
    return write_loop(
        tmp_path,
        f"""
        name: {name}
        env: {{BARRIER: "{barrier}"}}
        agent: {{command: {yaml_list(AGENT)}}}
        steps:
          before: [{{name: prep, run: "echo prep"}}]
          after: [{{name: note, run: "echo note"}}]
        until: {{max_iterations: {iterations}}}
        """
        + batch,
        name=f"{name}.yaml",
    )


def start_run(loop: Path, cwd: Path) -> subprocess.Popen[str]:
    """``ralph run LOOP -q`` in the background; its stdout and stderr come back from communicate()."""
    return subprocess.Popen([PY, "-m", "ralph", "run", str(loop), "-q"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_concurrent_runs_share_one_history(tmp_path: Path, isolated: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    names = ["alpha", "beta", "gamma"]
    loops = [busy_loop(tmp_path, n, barrier, 15) for n in names]
    procs = [start_run(loop, tmp_path) for loop in loops]
    try:
        for n in names:
            wait_for(barrier / f"{n}-x.started")
        # All three are mid-iteration: a reader is not locked out and sees them running.
        listing = ralph("sessions", "--json")
        assert listing.returncode == 0, listing.stderr
        assert sorted(r["loop"] for r in json.loads(listing.stdout) if r["status"] == "running") == names
        (barrier / "go").touch()
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err
    assert db_rows(isolated, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    counts = db_rows(
        isolated,
        "SELECT loop, count(*) AS n, max(iteration) AS last FROM sessions "
        "WHERE status = 'ok' GROUP BY loop ORDER BY loop",
    )
    assert counts == [{"loop": n, "n": 15, "last": 15} for n in names]
    assert db_rows(isolated, "SELECT count(*) AS n FROM steps WHERE status = 'ok'") == [{"n": 3 * 15 * 3}]
    assert db_rows(isolated, "SELECT DISTINCT status FROM runs") == [{"status": "ok"}]


def test_parallel_batch_items_share_one_history(tmp_path: Path, isolated: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    items = [f"item-{n}" for n in range(8)]
    loop = busy_loop(tmp_path, "fleet", barrier, 6, batch=f"batch: {{items: {json.dumps(items)}, parallel: 8}}\n")
    proc = start_run(loop, tmp_path)
    try:
        for item in items:
            wait_for(barrier / f"fleet-{item}.started")  # all eight at once
        (barrier / "go").touch()
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert db_rows(isolated, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    counts = db_rows(
        isolated, "SELECT item, count(*) AS n FROM sessions WHERE status = 'ok' GROUP BY item ORDER BY item"
    )
    assert counts == [{"item": i, "n": 6} for i in items]
    assert db_rows(isolated, "SELECT count(*) AS n FROM steps WHERE status = 'ok'") == [{"n": 8 * 6 * 3}]


def test_many_ralphs_can_create_the_same_history_at_once(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(
        tmp_path,
        f"""
        name: quick
        agent: {{command: {yaml_list([PY, "-c", "pass"])}}}
        until: {{max_iterations: 3}}
        """,
    )
    procs = [start_run(loop, tmp_path) for _ in range(6)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    assert db_rows(isolated, "SELECT count(*) AS n FROM sessions WHERE status = 'ok'") == [{"n": 18}]
    assert db_rows(isolated, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]


def test_a_run_that_ended_in_an_error_can_be_resumed(store: Store) -> None:
    store.start_run("run_a", "demo", None)
    store.finish_run("run_a", "error", 1)
    store.start_run("run_b", "demo", None)
    store.finish_run("run_b", "failed", 1)  # ran to its end: nothing to resume there
    assert store.unfinished_run("demo")["id"] == "run_a"  # type: ignore[index]


def test_rows_read_back_as_written_with_prefixes_and_order(store: Store) -> None:
    store.start_run("run_01", "demo", "/x/loop.yaml", batch="b1")
    for n in (1, 2, 3):
        store.start_session(id=f"ses_0{n}", run_id="run_01", loop="demo", title=f"t {n}", iteration=n, item="a")
        step = store.start_step(os.getpid(), session_id=f"ses_0{n}", run_id="run_01", name="agent", kind="agent",
                                attempt=1, log_path="/tmp/x.log")
        store.finish_step(step, "ok", 0, pid=os.getpid())
        store.finish_session(f"ses_0{n}", "ok", tokens_in=2**40, tokens_out=7, cost_usd=0.125)
    store.finish_run("run_01", "ok", 0)
    newest = store.newest_session()
    assert newest is not None and newest["id"] == "ses_03"
    assert [r["id"] for r in store.sessions(limit=2)] == ["ses_03", "ses_02"]
    assert [r["id"] for r in store.sessions(run="run_0")] == ["ses_03", "ses_02", "ses_01"]
    assert store.resolve_session("ses_02")["tokens_in"] == 2**40
    assert store.resolve_run("run_0")["host"] == socket.gethostname()
    with pytest.raises(UsageError, match="more than one session"):
        store.find_session("ses_0")
    with pytest.raises(UsageError, match="no session 'ses_9'"):
        store.resolve_session("ses_9")
    (step,) = store.steps("ses_01")
    assert (step["status"], step["exit_code"], step["pid_start"] is not None) == ("ok", 0, True)
    started = store.resolve_run("run_01")["started"]
    assert isinstance(started, float) and abs(started - time.time()) < 3600  # 8-byte floats on both
    assert [r["iteration"] for r in store.run_sessions("run_01")] == [1, 2, 3]
    point = store.item_resume_point("demo", "b1", "a")
    assert point is not None and (point.last_iteration, point.finished, point.cost) == (3, 3, 0.375)
    assert store.run_hosts(["run_01"]) == {"run_01": socket.gethostname()}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_version_2_history_is_upgraded_by_the_migrations(backend: str, isolated: Path,
                                                           request: pytest.FixtureRequest) -> None:
    """The same MIGRATIONS run on both backends (PostgreSQL's with its type names)."""
    from ralph.store.schema import for_postgres, statements

    url = None
    if backend == "sqlite":
        isolated.mkdir(mode=0o700)
        db = sqlite3.connect(isolated / "ralph.db")
        db.executescript(V2_TABLES + "PRAGMA user_version = 2;")
        db.close()
    else:
        import psycopg

        url = request.getfixturevalue("postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in statements(for_postgres(V2_TABLES)):
                conn.execute(statement)
            conn.execute("CREATE TABLE ralph_schema (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO ralph_schema VALUES (2)")
    store = Store(isolated, url=url)
    assert store.resolve_run("run_old")["started"] == 1.5
    assert rows(store, "SELECT count(*) AS n FROM batch_items") == [{"n": 0}]
    version = (rows(store, "SELECT max(version) AS v FROM ralph_schema")[0]["v"] if url
               else rows(store, "PRAGMA user_version")[0]["user_version"])
    assert version == SCHEMA_VERSION
    store.close()


def test_an_old_history_is_upgraded_to_the_newest_schema(store: Store, isolated: Path) -> None:
    """A second open finds the schema current; every table of the newest version is there."""
    url = getattr(store, "url", None)
    again = Store(isolated, url=url)
    again.start_run("run_1", "demo", None)
    assert rows(again, "SELECT count(*) AS n FROM batch_items") == [{"n": 0}]
    again.close()
