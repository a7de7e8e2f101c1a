"""The history: runs, sessions and steps in ``ralph.db`` (SQLite, WAL).

Every write is its own short transaction so a ``kill -9`` loses at most the row in flight and two
runs sharing a state folder never lock each other out for long.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ralph.errors import StateError, UsageError
from ralph.process import end_leftover_group, private_dirs, process_alive, process_start

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, loop TEXT NOT NULL, loop_file TEXT, status TEXT NOT NULL, exit_code INTEGER,
    started REAL NOT NULL, ended REAL, host TEXT, pid INTEGER, pid_start TEXT, trace_id TEXT,
    span_id TEXT, batch TEXT, shard TEXT, resumed_from TEXT, stop_reason TEXT
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, run_id TEXT NOT NULL, loop TEXT NOT NULL, title TEXT NOT NULL,
    iteration INTEGER NOT NULL, item TEXT, status TEXT NOT NULL, started REAL NOT NULL, ended REAL,
    previous_id TEXT, trace_id TEXT, span_id TEXT, agent_session_id TEXT, tokens_in INTEGER,
    tokens_out INTEGER, cost_usd REAL, reason TEXT, fingerprint TEXT, feedback TEXT
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started);
CREATE INDEX IF NOT EXISTS sessions_run ON sessions (run_id, iteration);
CREATE INDEX IF NOT EXISTS sessions_loop ON sessions (loop, started);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, run_id TEXT NOT NULL, name TEXT NOT NULL,
    kind TEXT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL, exit_code INTEGER, pid INTEGER,
    started REAL NOT NULL, ended REAL, log_path TEXT, span_id TEXT, reason TEXT, pid_start TEXT
);
CREATE INDEX IF NOT EXISTS steps_session ON steps (session_id, id);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
"""
# Each version's upgrade from the one before; a fresh file gets SCHEMA at the newest version.
MIGRATIONS = {
    2: "ALTER TABLE steps ADD COLUMN pid_start TEXT;",
    3: "",  # issue 12 (git provenance) owns migration 3
    # Loop judgement: why a run stopped; a session's failure fingerprint and the feedback it was given.
    4: "ALTER TABLE runs ADD COLUMN stop_reason TEXT; ALTER TABLE sessions ADD COLUMN fingerprint TEXT;"
       "ALTER TABLE sessions ADD COLUMN feedback TEXT;",
}
FINAL = ("ok", "failed", "complete", "timeout", "interrupted", "abandoned", "error", "exhausted", "claim_rejected")
# Iterations that ran to their end: what a resumed run counts against max_iterations.
FINISHED = ("ok", "failed", "complete", "timeout", "claim_rejected")


@dataclass(frozen=True)
class ResumePoint:
    """Where one item (or the only loop) of an unfinished run stopped."""

    last_iteration: int
    last_session_id: str
    finished: int  # iterations that ran to their end, over the whole chain of resumed runs
    cost: float
    complete: bool  # its last iteration met the success condition: nothing left to do


def resolve_state_dir(option: str | os.PathLike[str] | None = None) -> Path:
    raw = option or os.environ.get("RALPH_STATE_DIR") or ".ralph"
    return Path(raw).expanduser().resolve()


def ensure_dir(path: Path) -> Path:
    try:
        private_dirs(path / "logs")
    except OSError as exc:
        raise StateError(f"cannot create the state folder {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(f"the state folder {path} is not writable")
    return path


def _hostname() -> str:
    return os.uname().nodename  # socket.gethostname()'s answer, without importing socket at start-up


def _stderr(message: str) -> None:
    print(f"ralph: warning: {message}", file=sys.stderr)


def _pid_alive(pid: int | None, start: str | None) -> bool:
    """A ralph that is still running: same PID, same start time, and not a zombie (a dead ralph
    whose parent has not reaped it yet still answers kill(0))."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not process_alive(pid):
        return False
    current = process_start(pid)
    return start is None or current is None or current == start


def _close_running(db: sqlite3.Connection, run_id: str, status: str) -> float:
    """Inside a transaction: the run's steps and sessions still ``running`` end with ``status``, now
    (returned, for the run's own row)."""
    now = time.time()
    for table in ("steps", "sessions"):
        db.execute(f"UPDATE {table} SET status = ?, ended = ? WHERE run_id = ? "  # noqa: S608 - our names
                   "AND status = 'running'", (status, now, run_id))
    return now


class Store:
    def __init__(self, state_dir: Path, create: bool = True) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "ralph.db"
        if not create and not self.path.exists():
            raise StateError(f"no history at {self.path}")
        self._lock = threading.Lock()
        try:
            if create:
                ensure_dir(state_dir)
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 30000")
            if create:
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            if create:
                self._upgrade()
        except OSError as exc:
            raise StateError(f"cannot create the history {self.path}: {exc.strerror}") from None
        except sqlite3.Error as exc:
            raise StateError(f"cannot use the history {self.path}: {exc}") from None

    def _upgrade(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        with self._tx() as db:
            # Re-read under the write lock: another ralph may have upgraded the file meanwhile.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            upgrades = (MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1))
            script = SCHEMA if version == 0 else "".join(upgrades)
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; BEGIN IMMEDIATE takes the write lock up front so the busy
        timeout, not a deadlock error, settles a race with another ralph."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, args: Mapping[str, Any] | tuple[Any, ...]) -> int:
        try:
            with self._lock:
                cur = self._db.execute(sql, args)
                return cur.lastrowid or 0
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot write the history {self.path}: {exc}") from None

    def _insert(self, table: str, row: Mapping[str, Any]) -> int:
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        return self._write(f"INSERT INTO {table} ({cols}) VALUES ({marks})", row)  # noqa: S608 - our names

    def _update(self, table: str, key: Any, row: Mapping[str, Any]) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in row)
        self._write(f"UPDATE {table} SET {sets} WHERE id = :_key", {**row, "_key": key})  # noqa: S608

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        try:
            with self._lock:
                return [dict(r) for r in self._db.execute(sql, args).fetchall()]
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the history {self.path}: {exc}") from None

    # -- writes ---------------------------------------------------------------------------------
    def start_run(self, run_id: str, loop: str, loop_file: str | None, **extra: Any) -> None:
        pid = os.getpid()
        self._insert("runs", {"id": run_id, "loop": loop, "loop_file": loop_file, "status": "running",
                              "started": time.time(), "host": _hostname(), "pid": pid,
                              "pid_start": process_start(pid), **extra})

    def finish_run(self, run_id: str, status: str, exit_code: int, stop_reason: str | None = None) -> None:
        """The run's end; sessions and steps it left ``running`` (an interrupt, an error) end with it."""
        left = status if status in ("interrupted", "error") else "abandoned"
        try:
            with self._tx() as db:
                now = _close_running(db, run_id, left)
                db.execute("UPDATE runs SET status = ?, exit_code = ?, ended = ?, stop_reason = ? WHERE id = ?",
                           (status, exit_code, now, stop_reason, run_id))
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot write the history {self.path}: {exc}") from None

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._update("runs", run_id, fields)

    def start_session(self, **row: Any) -> None:
        self._insert("sessions", {"status": "running", "started": time.time(), **row})

    def finish_session(self, session_id: str, status: str, **fields: Any) -> None:
        self._update("sessions", session_id, {"status": status, "ended": time.time(), **fields})

    def update_session(self, session_id: str, **fields: Any) -> None:
        self._update("sessions", session_id, fields)

    def start_step(self, pid: int | None = None, **row: Any) -> int:
        """A step's row, written once its child is spawned: with the child's PID and start time, so
        the next ralph can end it if this one dies (one write per step start, not two)."""
        if pid is not None:
            row.update(pid=pid, pid_start=process_start(pid))
        return self._insert("steps", {"status": "running", "started": time.time(), **row})

    def finish_step(self, step_id: int, status: str, exit_code: int | None, **fields: Any) -> None:
        self._update("steps", step_id, {"status": status, "exit_code": exit_code, "ended": time.time(),
                                         **fields})

    def mark_abandoned(self, warn: Callable[[str], None] | None = None) -> list[str]:
        """Runs left ``running`` by a ralph that died (kill -9, power loss) become ``abandoned``, with
        their running sessions and steps. A child it left behind (its own process group, so the
        kill did not reach it) is ended, and ``warn`` is told. A history it cannot write (a full
        disk) is left as it is, with a warning: reading it must still work."""
        host = _hostname()
        dead = [r["id"] for r in self._query(
            "SELECT id, host, pid, pid_start FROM runs WHERE status = 'running'")
            if r["host"] == host and not _pid_alive(r["pid"], r["pid_start"])]
        for run_id in dead:
            leftovers = self._query("SELECT pid, pid_start, session_id, name FROM steps WHERE run_id = ? AND "
                                    "status = 'running' AND pid IS NOT NULL", (run_id,))
            try:
                with self._tx() as db:
                    now = _close_running(db, run_id, "abandoned")
                    db.execute("UPDATE runs SET status = 'abandoned', ended = ? WHERE id = ? "
                               "AND status = 'running'", (now, run_id))
            except sqlite3.DatabaseError as exc:  # a repair, not the command's job: say so and go on
                (warn or _stderr)(f"cannot mark the dead run {run_id} abandoned: {exc}")
                continue
            for row in leftovers:
                if end_leftover_group(row["pid"], row["pid_start"]):
                    (warn or _stderr)(f"ended process group {row['pid']} ({row['name']} of session "
                                      f"{row['session_id']}), left running by the dead run {run_id}")
        return dead

    # -- reads ----------------------------------------------------------------------------------
    def sessions(self, loop: str | None = None, run: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        where, args = [], []
        if loop:
            where.append("loop = ?")
            args.append(loop)
        if run:
            where.append("run_id = ?")
            args.append(self.resolve_run(run)["id"])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._query(f"SELECT * FROM sessions {clause} ORDER BY started DESC, rowid DESC LIMIT ?",  # noqa: S608
                           (*args, limit))

    def _resolve(self, table: str, ident: str) -> dict[str, Any] | None:
        rows = self._query(f"SELECT * FROM {table} WHERE id >= ? AND id < ? LIMIT 2",  # noqa: S608
                           (ident, ident + "\uffff"))
        exact = [r for r in rows if r["id"] == ident]
        if exact:
            return exact[0]
        if len(rows) > 1:
            raise UsageError(f"{ident!r} matches more than one {table[:-1]}; give more of the ID")
        return rows[0] if rows else None

    def find_session(self, ident: str) -> dict[str, Any] | None:
        return self._resolve("sessions", ident)

    def resolve_session(self, ident: str) -> dict[str, Any]:
        row = self.find_session(ident)
        if row is None:
            raise UsageError(f"no session {ident!r} in {self.path}")
        return row

    def find_run(self, ident: str) -> dict[str, Any] | None:
        return self._resolve("runs", ident)

    def resolve_run(self, ident: str) -> dict[str, Any]:
        row = self.find_run(ident)
        if row is None:
            raise UsageError(f"no run {ident!r} in {self.path}")
        return row

    def newest_session(self) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM sessions ORDER BY started DESC, rowid DESC LIMIT 1")
        return rows[0] if rows else None

    def steps(self, session_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM steps WHERE session_id = ? ORDER BY id", (session_id,))

    def run_sessions(self, run_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM sessions WHERE run_id = ? ORDER BY started, rowid", (run_id,))

    def unfinished_run(self, loop: str) -> dict[str, Any] | None:
        """The newest run of this loop that stopped before its end (interrupted, ended by an error,
        or abandoned by a ralph that died) and that no later run has resumed yet."""
        rows = self._query("SELECT * FROM runs WHERE loop = ? AND status IN ('abandoned', 'interrupted', 'error') "
                           "AND id NOT IN (SELECT resumed_from FROM runs WHERE resumed_from IS NOT NULL) "
                           "ORDER BY started DESC, rowid DESC LIMIT 1", (loop,))
        return rows[0] if rows else None

    def resume_points(self, run_id: str) -> dict[str | None, ResumePoint]:
        """Per item (None outside a batch): where the run, and the runs it resumed, stopped."""
        chain: list[str] = []
        current: str | None = run_id
        while current and current not in chain:
            chain.append(current)
            rows = self._query("SELECT resumed_from FROM runs WHERE id = ?", (current,))
            current = rows[0]["resumed_from"] if rows else None
        marks = ", ".join("?" * len(chain))
        sessions = self._query(f"SELECT id, item, iteration, status, cost_usd FROM sessions WHERE run_id IN "  # noqa: S608
                               f"({marks}) ORDER BY iteration, started, rowid", tuple(chain))
        points: dict[str | None, ResumePoint] = {}
        for row in sessions:
            before = points.get(row["item"])
            points[row["item"]] = ResumePoint(
                last_iteration=row["iteration"], last_session_id=row["id"],
                finished=(before.finished if before else 0) + (row["status"] in FINISHED),
                cost=(before.cost if before else 0.0) + (row["cost_usd"] or 0.0),
                complete=row["status"] == "complete")
        return points
