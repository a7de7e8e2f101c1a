"""Real git repositories for tests: made with an identity of their own (``-c``), so neither the
user's git config nor ralph's fallback identity is needed to set them up."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

IDENT = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]


def no_identity_env(tmp: Path) -> dict[str, str]:
    """An env in which git finds no identity and no user config at all."""
    empty = tmp / "empty-gitconfig"
    empty.write_text("")
    return {"GIT_CONFIG_GLOBAL": str(empty), "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp),
            "EMAIL": "", "GIT_AUTHOR_NAME": "", "GIT_AUTHOR_EMAIL": ""}


def git(repo: Path, *args: str, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    proc = subprocess.run(["git", *IDENT, *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {args}: {proc.stderr}")
    return proc.stdout


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"a.txt": "one\ntwo\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def refs(repo: Path, prefix: str = "refs/ralph/") -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", prefix).split()


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def drop_session_refs(folder: Path, state: Path) -> None:
    """Tests that run a shipped loop in this checkout drop the snapshot refs its sessions made, so
    the test suite leaves no refs in the developer's repository."""
    import sqlite3

    if not (state / "ralph.db").exists():
        return
    with contextlib.closing(sqlite3.connect(state / "ralph.db")) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM sessions WHERE git_before IS NOT NULL")]
    lines = "".join(f"delete refs/ralph/sessions/{i}/{which}\n" for i in ids for which in ("before", "after"))
    if lines:
        subprocess.run(["git", "update-ref", "--stdin"], cwd=folder, input=lines, text=True, check=False)
