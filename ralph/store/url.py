"""Which database a command's history is in: ``--db URL``, else ``$RALPH_DATABASE_URL``, else
SQLite in the state folder. The one place that decides it (``Store(state_dir)`` asks here)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ralph.errors import UsageError

if TYPE_CHECKING:
    from ralph.store.base import Store

DATABASE_URL_ENV = "RALPH_DATABASE_URL"
POSTGRES_SCHEMES = ("postgresql", "postgres")
INSTALL_HINT = "pip install 'ralph-loops[postgres]'"
_chosen: list[str | None] = [None]  # --db of this command (set once by the CLI)


def use(url: str | None) -> None:
    """The CLI's ``--db``: every Store this command opens uses it (it wins over the env)."""
    _chosen[0] = url.strip() if url and url.strip() else None


def database_url(url: str | None = None) -> str | None:
    """The URL in force, or None for SQLite in the state folder."""
    given = url or _chosen[0] or os.environ.get(DATABASE_URL_ENV, "").strip()
    return given or None


def redact(url: str) -> str:
    """The URL as messages show it: no password."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = (parts.username or "") + ":***"
        return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))
    except ValueError:
        return "the database URL"


def backend_for(url: str | None) -> type[Store]:
    chosen = database_url(url)
    if chosen is None:
        from ralph.store.sqlite import SqliteStore

        return SqliteStore
    scheme = chosen.split(":", 1)[0].lower() if ":" in chosen else ""
    if scheme not in POSTGRES_SCHEMES:
        raise UsageError(f"unsupported history database {redact(chosen)!r}: give a postgresql://USER@HOST/DB "
                         f"URL (or none, for SQLite in the state folder)")
    from ralph.store.postgres import PostgresStore

    return PostgresStore


def is_shared(url: str | None = None) -> bool:
    return database_url(url) is not None
