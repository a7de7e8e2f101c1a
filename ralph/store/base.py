"""The history's one interface: runs, sessions and steps, whichever database holds them.

Every write is a short transaction so two runs sharing a history never lock each other out for long.
A backend may queue an iteration's writes and commit them together (``writer.GroupWriter``: SQLite
does): once a child is spawned (its row, with the PID that recovery needs) and at the iteration's
end, so a ``kill -9`` loses at most the end of the iteration in flight.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ralph.errors import StateError, UsageError
from ralph.pids import end_leftover_group, process_alive, process_start, same_start
from ralph.process import private_dirs
from ralph.store.writer import GroupWriter, PendingId

T = TypeVar("T")
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
    return same_start(start, process_start(pid))


def _close_running(db: Any, run_id: str, status: str) -> float:
    """Inside a transaction: the run's steps and sessions still ``running`` end with ``status``, now
    (returned, for the run's own row)."""
    now = time.time()
    for table in ("steps", "sessions"):
        db.execute(f"UPDATE {table} SET status = ?, ended = ? WHERE run_id = ? "  # noqa: S608 - our names
                   "AND status = 'running'", (status, now, run_id))
    return now


class Store:
    """One history, whichever database holds it. ``Store(state_dir)`` opens the one this command
    uses (``--db``, else ``$RALPH_DATABASE_URL``, else ``ralph.db`` in the state folder: see
    ``ralph.store.url``); the backends only supply the primitives below."""

    ROWID = "rowid"  # the insertion-order tie-break of sessions and runs with equal start times
    shared = False  # True where several hosts can share the history (and so a batch's queue)
    path: Any  # what error messages name: the SQLite file, or the URL without its password
    url: str | None = None  # a shared database's URL (None: the state folder's SQLite file)
    _lock: Any
    _errors: tuple[type[BaseException], ...] = ()
    _writer: GroupWriter | None = None  # where the loop's row writes queue (None: written at once)

    def __new__(cls, state_dir: Path, create: bool = True, url: str | None = None) -> Store:
        if cls is not Store:
            return super().__new__(cls)
        from ralph.store.url import backend_for

        return super().__new__(backend_for(url))

    def __init__(self, state_dir: Path, create: bool = True, url: str | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _tx(self) -> contextlib.AbstractContextManager[Any]:
        """One short write transaction; what it yields has ``execute(sql, args)`` (qmark style)."""
        raise NotImplementedError

    def atomically(self, body: Callable[[Any], T]) -> T:
        """``body(db)`` in one write transaction (a backend may replay it after a lost connection)."""
        with self._tx() as db:
            return body(db)

    def _write(self, sql: str, args: Mapping[str, Any] | tuple[Any, ...]) -> int:
        raise NotImplementedError

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """One statement on its own (its own transaction), and the rows it returns."""
        return self._query(sql, args)

    def _insert(self, table: str, row: Mapping[str, Any]) -> int:
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        return self._write(f"INSERT INTO {table} ({cols}) VALUES ({marks})", row)  # noqa: S608 - our names

    def _update(self, table: str, key: Any, row: Mapping[str, Any]) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in row)
        self._write(f"UPDATE {table} SET {sets} WHERE id = :_key", {**row, "_key": key})  # noqa: S608

    def _insert_later(self, table: str, row: dict[str, Any], pid: int | None = None) -> Any:
        """An insert queued when the backend queues writes; its ID (a ``PendingId`` then)."""
        if self._writer is None:
            if pid is not None:
                row.update(pid=pid, pid_start=row.get("pid_start") or process_start(pid))
            return self._insert(table, row)
        pending = PendingId()

        def op(db: Any) -> None:
            if pid is not None:
                row.update(pid=pid, pid_start=row.get("pid_start") or process_start(pid))
            cols, marks = ", ".join(row), ", ".join(f":{k}" for k in row)
            pending.value = db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", row).lastrowid  # noqa: S608

        self._writer.put(op)
        if pid is not None:  # the child runs: its row (and its session's) must survive a kill -9 of ralph now,
            self._writer.flush(wait=False)  # committed by this thread, or right after by the one committing
        return pending

    def _update_later(self, table: str, key: Any, row: dict[str, Any]) -> None:
        if self._writer is None:
            return self._update(table, key, row)
        sets = ", ".join(f"{k} = :{k}" for k in row)
        sql = f"UPDATE {table} SET {sets} WHERE id = :_key"  # noqa: S608 - our names

        def op(db: Any) -> None:
            db.execute(sql, {**row, "_key": key.value if isinstance(key, PendingId) else key})

        self._writer.put(op)
        return None

    def step_id(self, handle: Any) -> int:
        """The row ID behind what ``start_step`` returned, once written."""
        if isinstance(handle, PendingId):
            self.flush()
            return handle.value
        return int(handle)

    def flush(self, wait: bool = True) -> None:
        """Everything queued so far is committed (raises what the writer could not write). ``wait=False``:
        or is being committed by another thread, which commits these right after (``GroupWriter``)."""
        if self._writer is not None:
            self._writer.flush(wait)

    # -- writes ---------------------------------------------------------------------------------
    def start_run(self, run_id: str, loop: str, loop_file: str | None, **extra: Any) -> None:
        pid = os.getpid()
        self._insert("runs", {"id": run_id, "loop": loop, "loop_file": loop_file, "status": "running",
                              "started": time.time(), "host": _hostname(), "pid": pid,
                              "pid_start": process_start(pid), **extra})

    def finish_run(self, run_id: str, status: str, exit_code: int, stop_reason: str | None = None) -> None:
        """The run's end; sessions and steps it left ``running`` (an interrupt, an error) end with it."""
        left = status if status in ("interrupted", "error") else "abandoned"
        def body(db: Any) -> None:
            now = _close_running(db, run_id, left)
            db.execute("UPDATE runs SET status = ?, exit_code = ?, ended = ?, stop_reason = ? WHERE id = ?",
                       (status, exit_code, now, stop_reason, run_id))

        try:
            self.atomically(body)
        except self._errors as exc:
            raise StateError(f"cannot write the history {self.path}: {exc}") from None

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._update("runs", run_id, fields)

    def start_session(self, **row: Any) -> None:
        self._insert_later("sessions", {"status": "running", "started": time.time(), **row})

    def finish_session(self, session_id: str, status: str, **fields: Any) -> None:
        """The iteration's end. Queued: it is committed with the next child's rows (one transaction
        an iteration), or by ``flush()``, which the loop calls before anything that may take long
        without a child (its end, a pause, a retry's wait, a git snapshot)."""
        self._update_later("sessions", session_id, {"status": status, "ended": time.time(), **fields})

    def update_session(self, session_id: str, **fields: Any) -> None:
        self._update_later("sessions", session_id, fields)

    def start_step(self, pid: int | None = None, **row: Any) -> Any:
        """A step's row, written once its child is spawned: with the child's PID and start time, so
        the next ralph can end it if this one dies (one write per step start, not two). Its ID is for
        ``finish_step`` only (a ``PendingId`` while the write is queued)."""
        return self._insert_later("steps", {"status": "running", "started": time.time(), **row}, pid)

    def finish_step(self, step_id: Any, status: str, exit_code: int | None, **fields: Any) -> None:
        self._update_later("steps", step_id, {"status": status, "exit_code": exit_code, "ended": time.time(),
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
        repairable: tuple[type[BaseException], ...] = (*self._errors, StateError)
        for run_id in dead:
            leftovers = self._query("SELECT pid, pid_start, session_id, name FROM steps WHERE run_id = ? AND "
                                    "status = 'running' AND pid IS NOT NULL", (run_id,))
            def body(db: Any, run_id: str = run_id) -> None:
                now = _close_running(db, run_id, "abandoned")
                db.execute("UPDATE runs SET status = 'abandoned', ended = ? WHERE id = ? "
                           "AND status = 'running'", (now, run_id))

            try:
                self.atomically(body)
            except repairable as exc:  # a repair, not the command's job: say so and go on
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
        return self._query(f"SELECT * FROM sessions {clause} ORDER BY started DESC, {self.ROWID} DESC LIMIT ?",  # noqa: S608
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
        rows = self._query(f"SELECT * FROM sessions ORDER BY started DESC, {self.ROWID} DESC LIMIT 1")  # noqa: S608
        return rows[0] if rows else None

    def steps(self, session_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM steps WHERE session_id = ? ORDER BY id", (session_id,))

    def run_sessions(self, run_id: str) -> list[dict[str, Any]]:
        return self._query(f"SELECT * FROM sessions WHERE run_id = ? ORDER BY started, {self.ROWID}",  # noqa: S608
                           (run_id,))

    def unfinished_run(self, loop: str) -> dict[str, Any] | None:
        """The newest run of this loop that stopped before its end (interrupted, ended by an error,
        or abandoned by a ralph that died) and that no later run has resumed yet."""
        rows = self._query("SELECT * FROM runs WHERE loop = ? AND status IN ('abandoned', 'interrupted', 'error') "  # noqa: S608
                           "AND id NOT IN (SELECT resumed_from FROM runs WHERE resumed_from IS NOT NULL) "
                           f"ORDER BY started DESC, {self.ROWID} DESC LIMIT 1", (loop,))
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
                               f"({marks}) ORDER BY iteration, started, {self.ROWID}", tuple(chain))
        return _points(sessions)

    def item_resume_point(self, loop: str, batch: str, item: str) -> ResumePoint | None:
        """Where an item of a shared batch stopped, over every run of that batch on any host (a
        takeover continues the numbering of whichever hosts ran it before)."""
        sessions = self._query(
            "SELECT id, item, iteration, status, cost_usd FROM sessions WHERE loop = ? AND item = ? AND run_id IN "  # noqa: S608
            f"(SELECT id FROM runs WHERE loop = ? AND batch = ?) ORDER BY iteration, started, {self.ROWID}",
            (loop, item, loop, batch))
        return _points(sessions).get(item)

    def run_hosts(self, run_ids: list[str]) -> dict[str, str | None]:
        if not run_ids:
            return {}
        marks = ", ".join("?" * len(run_ids))
        rows = self._query(f"SELECT id, host FROM runs WHERE id IN ({marks})", tuple(run_ids))  # noqa: S608
        return {r["id"]: r["host"] for r in rows}

    def hosts(self) -> int:
        """How many hosts ran loops into this history."""
        return int(self._query("SELECT count(DISTINCT host) AS n FROM runs")[0]["n"])

    def runs(self, batch: str | None = None, limit: int = 10000) -> list[dict[str, Any]]:
        """Runs newest first; with ``batch``, only the runs of that batch (``ralph report``)."""
        clause, args = ("WHERE batch = ?", (batch,)) if batch is not None else ("", ())
        return self._query(f"SELECT * FROM runs {clause} ORDER BY started DESC, {self.ROWID} DESC LIMIT ?",  # noqa: S608
                           (*args, limit))

    def run_steps(self, run_id: str) -> list[dict[str, Any]]:
        """Every step of a run in one query (a report of 5000 sessions would otherwise make 5000)."""
        return self._query("SELECT * FROM steps WHERE run_id = ? ORDER BY id", (run_id,))

    def sessions_with_commit(self, sha: str) -> list[dict[str, Any]]:
        """Sessions during which a commit whose SHA starts with ``sha`` was made (``commits`` is a JSON list)."""
        if not sha or any(c not in "0123456789abcdef" for c in sha.lower()):
            return []
        return self._query(f"SELECT * FROM sessions WHERE commits LIKE ? ORDER BY started, {self.ROWID}",  # noqa: S608
                           (f'%"{sha.lower()}%',))

    def running_runs(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM runs WHERE status = 'running' ORDER BY started")


def _points(sessions: list[dict[str, Any]]) -> dict[str | None, ResumePoint]:
    points: dict[str | None, ResumePoint] = {}
    for row in sessions:
        before = points.get(row["item"])
        points[row["item"]] = ResumePoint(
            last_iteration=row["iteration"], last_session_id=row["id"],
            finished=(before.finished if before else 0) + (row["status"] in FINISHED),
            cost=(before.cost if before else 0.0) + (row["cost_usd"] or 0.0),
            complete=row["status"] == "complete")
    return points
