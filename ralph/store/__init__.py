"""The history: runs, sessions and steps. One interface (``Store``), two backends: SQLite in the
state folder (the default) and PostgreSQL (``--db`` / ``$RALPH_DATABASE_URL``), shared by hosts."""

from ralph.store.base import FINAL, FINISHED, ResumePoint, Store, ensure_dir, resolve_state_dir
from ralph.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from ralph.store.url import database_url, use


def history_exists(state_dir: "object") -> bool:
    """Whether there is a history to read: a PostgreSQL one always is; SQLite's is a file."""
    from pathlib import Path

    return database_url() is not None or (Path(str(state_dir)) / "ralph.db").exists()


__all__ = ["FINAL", "FINISHED", "MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "ResumePoint", "Store", "database_url",
           "ensure_dir", "history_exists", "resolve_state_dir", "use"]
