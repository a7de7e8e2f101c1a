"""The embedded history: ``ralph.db`` in the state folder (SQLite, WAL, busy timeout)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ralph.errors import StateError
from ralph.store.base import Store, ensure_dir
from ralph.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, statements
from ralph.store.writer import GroupWriter


class SqliteStore(Store):
    _errors = (sqlite3.DatabaseError,)

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
            # A checkpoint (with its fsyncs) every ~400 iterations instead of ~100: it runs inside the
            # commit that crosses the mark, and mostly copies the same few pages again.
            self._db.execute("PRAGMA wal_autocheckpoint = 4000")
            if create:
                self._upgrade()
                self._writer = GroupWriter(self._locked_tx, self._failed_write)
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
            with self._lock:
                self._db.close()

    def _settle(self) -> None:
        """What this process queued is written before it reads or writes anything else."""
        if self._writer is not None and not self._writer.idle:
            self._writer.flush()

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        self._settle()
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
