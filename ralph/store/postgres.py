"""The shared history: PostgreSQL through psycopg 3 (the ``postgres`` extra), imported only when a
``postgresql://`` URL is in force.

Every host of a batch writes here; logs and ``traces.jsonl`` stay in each host's state folder (the
run's row names its host). A connection lost mid-run is retried with backoff for
``$RALPH_DATABASE_RETRY`` seconds (default 120), saying so on stderr, then the write fails with a
clear error; the iteration in flight still ends normally.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ralph.errors import StateError, UsageError
from ralph.store.base import Store
from ralph.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, for_postgres, statements
from ralph.store.url import INSTALL_HINT, database_url, redact

RETRY_ENV = "RALPH_DATABASE_RETRY"
_MIGRATION_LOCK = 0x7261_6C70_6800  # pg_advisory_xact_lock key: one upgrade at a time ("ralph")
T = TypeVar("T")


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """qmark / named style (what the shared code and SQLite speak) -> psycopg's format style."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    return re.sub(r"(?<!:):([A-Za-z_]\w*)", r"%(\1)s", sql)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__


class _Tx:
    """What a transaction body sees: ``execute(sql, args)`` in the shared SQL style."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Mapping[str, Any] | tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(_pg_sql(sql), args)


def _retry_seconds() -> float:
    raw = os.environ.get(RETRY_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else 120.0
    except ValueError:
        raise UsageError(f"${RETRY_ENV}={raw!r}: give a number of seconds") from None


class PostgresStore(Store):
    ROWID = "id"  # IDs are time-ordered; PostgreSQL has no rowid
    shared = True

    def __init__(self, state_dir: Path, create: bool = True, url: str | None = None) -> None:
        try:
            import psycopg
        except ImportError:
            raise UsageError(f"a PostgreSQL history needs psycopg: {INSTALL_HINT}") from None
        self._psycopg = psycopg
        self._errors = (psycopg.Error,)
        self.state_dir = state_dir
        self.url = database_url(url) or ""
        self.path = redact(self.url)
        self.retry_for = _retry_seconds()
        self._lock = threading.RLock()  # type: ignore[assignment]
        self._outage = self._gone = False
        try:
            self._conn = self._connect()
        except psycopg.Error as exc:
            raise UsageError(f"cannot connect to the history database {self.path}: {_first_line(exc)}") from None
        try:
            self._upgrade()
        except psycopg.Error as exc:
            raise StateError(f"cannot use the history database {self.path}: {_first_line(exc)}") from None

    def _connect(self) -> Any:
        from psycopg.rows import dict_row

        return self._psycopg.connect(self.url or "", autocommit=True, row_factory=dict_row, connect_timeout=10,
                                     application_name="ralph")

    def _upgrade(self) -> None:
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._conn.execute("CREATE TABLE IF NOT EXISTS ralph_schema (version INTEGER NOT NULL)")
            row = self._conn.execute("SELECT max(version) AS v FROM ralph_schema").fetchone()
            version = row["v"] or 0
            if version >= SCHEMA_VERSION:
                return
            upgrades = (MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1))
            script = SCHEMA if version == 0 else "".join(upgrades)
            for statement in statements(for_postgres(script)):
                self._conn.execute(statement)
            self._conn.execute("DELETE FROM ralph_schema")
            self._conn.execute("INSERT INTO ralph_schema (version) VALUES (%s)", (SCHEMA_VERSION,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- the connection, kept: a lost one is retried with backoff ------------------------------------
    def _attempt(self, action: Callable[[Any], T]) -> T:
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

        psycopg = self._psycopg

        def once() -> T:
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            result = action(self._conn)
            if self._outage:
                self._outage = False
                _warn(f"reconnected to the history database {self.path}")
            return result

        def before_sleep(state: Any) -> None:
            if not self._outage:
                self._outage = True
                error = state.outcome.exception() if state.outcome else None
                _warn(f"lost the history database {self.path} ({_first_line(error) if error else 'no answer'}); "
                      f"retrying for up to {self.retry_for:g}s")

        with self._lock:
            # Once a whole retry window has passed in vain, the run is ending: its last writes
            # (the run's end, the queue's release) get one try each, not a window each.
            window = 0.0 if self._gone else self.retry_for
            try:
                result = Retrying(stop=stop_after_delay(window), wait=wait_exponential(multiplier=0.25, max=5),
                                  retry=retry_if_exception_type(psycopg.OperationalError), before_sleep=before_sleep,
                                  reraise=True)(once)
            except psycopg.OperationalError as exc:
                self._gone = True
                raise StateError(f"the history database {self.path} stayed unreachable for {self.retry_for:g}s: "
                                 f"{_first_line(exc)}") from None
            self._gone = False
            return result

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        # A body cannot be replayed from here: only the connection is made sure of first.
        self._attempt(lambda conn: None)
        with self._lock, self._conn.transaction():
            yield _Tx(self._conn)

    def atomically(self, body: Callable[[_Tx], T]) -> T:
        """``body`` in one transaction, replayed whole on a new connection if the old one is lost."""

        def run(conn: Any) -> T:
            with conn.transaction():
                return body(_Tx(conn))

        return self._attempt(run)

    def _write(self, sql: str, args: Mapping[str, Any] | tuple[Any, ...]) -> int:
        try:
            def run(conn: Any) -> int:
                cur = conn.execute(_pg_sql(sql), args)
                row = cur.fetchone() if cur.description else None
                return int(row["id"]) if row else 0

            return self._attempt(run)
        except self._psycopg.Error as exc:
            raise StateError(f"cannot write the history {self.path}: {_first_line(exc)}") from None

    def _insert(self, table: str, row: Mapping[str, Any]) -> int:
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        # ON CONFLICT: a retry after a connection lost mid-commit must not fail on its own first try.
        returning = " RETURNING id" if table == "steps" else ""
        return self._write(f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING{returning}",  # noqa: S608
                           row)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        try:
            return self._attempt(lambda conn: list(conn.execute(_pg_sql(sql), args).fetchall()))
        except self._psycopg.Error as exc:
            raise StateError(f"cannot read the history {self.path}: {_first_line(exc)}") from None


def _warn(message: str) -> None:
    print(f"ralph: warning: {message}", file=sys.stderr, flush=True)
