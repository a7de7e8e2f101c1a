"""The embedded history: ``ralph.db`` in the state folder (SQLite, WAL, busy timeout)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ralph.errors import StateError
from ralph.store.base import Store, ensure_dir
from ralph.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, statements
from ralph.store.writer import GroupWriter


class SqliteStore(Store):
    _errors = (sqlite3.DatabaseError,)
    _checkpoints: _Checkpoints | None = None

    def __init__(self, state_dir: Path, create: bool = True, url: str | None = None) -> None:
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
                # WAL checkpoints on a thread of their own (see _Checkpoints), not in the commit that
                # crosses SQLite's mark of 1,000 pages.
                self._db.execute("PRAGMA wal_autocheckpoint = 0")
                self._checkpoints = _Checkpoints(self.path, lambda work: writer.between_commits(work))
                self._writer = writer = GroupWriter(self._locked_tx, self._failed_write, self._checkpoints.wrote)
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
            for statement in statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")

    def _failed_write(self, exc: Exception) -> StateError:
        return StateError(f"cannot write the history {self.path}: {exc}")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._checkpoints is not None:
                self._checkpoints.close()
            with self._lock:
                self._db.close()  # the last connection to close checkpoints the rest and removes the WAL

    def _settle(self) -> None:
        """What this process queued is written before it reads or writes anything else."""
        if self._writer is not None and not self._writer.idle:
            self._writer.flush()

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        self._settle()
        if self._checkpoints is not None:
            self._checkpoints.wrote(4)  # a few rows (a run's start or end, a batch item's claim)
        return self._locked_tx()

    @contextlib.contextmanager
    def _locked_tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front so the busy timeout, not a deadlock error,
        settles a race with another ralph."""
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
        self._settle()
        try:
            with self._lock:
                cur = self._db.execute(sql, args)
                return cur.lastrowid or 0
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot write the history {self.path}: {exc}") from None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        self._settle()
        try:
            with self._lock:
                return [dict(r) for r in self._db.execute(sql, args).fetchall()]
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the history {self.path}: {exc}") from None


class _Checkpoints:
    """Copies the WAL back into ``ralph.db`` on a thread of its own, with its own connection, once
    ``EVERY`` rows were written since the last time. SQLite's automatic checkpoint runs inside the
    commit that crosses its mark, on the loop's path to its next spawn: ~12 ms, nearly all of it the
    two fsyncs (of the WAL, then of the database), every ~400 iterations: 30 us an iteration on
    average. Here the loop goes on meanwhile: the rows it queues wait for the checkpoint to end and
    are committed by this thread right after (``GroupWriter.between_commits``). No commit may run
    during it, or the WAL would never be wholly copied back and SQLite would never start it over (it
    would grow without end). The thread holds the GIL only to start the checkpoint and to commit."""

    EVERY = 1500  # rows; ~2.5 WAL pages each (a table and its indexes), so ~4,000 pages as SQLite's default of 1,000

    def __init__(self, path: Path, between_commits: Callable[[Callable[[], None]], None]) -> None:
        self._path, self._between_commits = path, between_commits
        self._rows = 0
        self._wake = threading.Event()
        self._closed = False
        self._lock = threading.Lock()  # one thread
        self._thread: threading.Thread | None = None

    def wrote(self, rows: int) -> None:
        self._rows += rows
        if self._rows < self.EVERY or self._closed:
            return
        self._rows = 0
        with self._lock:
            if self._thread is None:  # a short run never needs one
                self._thread = threading.Thread(target=self._run, name="ralph-checkpoints", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)

        def checkpoint() -> None:
            with contextlib.suppress(sqlite3.Error):  # a full disk: the next one tries again
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")

        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closed:
                    return
                with contextlib.suppress(Exception):  # a commit that failed is the writer's to report
                    self._between_commits(checkpoint)
        finally:
            db.close()

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._wake.set()
            self._thread.join()
