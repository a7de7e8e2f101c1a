"""Commands over what sessions changed: ``ralph diff``, ``ralph restore`` and ``sessions --commit``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ralph import git
from ralph.errors import RalphError
from ralph.store import Store


def _store(state_dir: Path) -> Store:
    return Store(state_dir, create=False)


def _snapshots(row: dict[str, Any]) -> tuple[str, str]:
    if row.get("git_before") and not row.get("git_after"):
        raise RalphError(f"session {row['id']} has no snapshot after it ({row['status']}: it may still be running)")
    if not row.get("git_before") or not row.get("git_after"):
        raise RalphError(f"session {row['id']} has no git snapshots (not a git repository, or snapshots were off)")
    return row["git_before"], row["git_after"]


def _repo_folder(row: dict[str, Any]) -> Path:
    """Where to run git for this session: its work tree if it is still there, else the shared git folder
    (an isolated item's worktree is gone; its objects are not)."""
    for key in ("git_root", "git_dir"):
        if row.get(key) and Path(row[key]).is_dir():
            return Path(row[key])
    raise RalphError(f"the git repository of session {row['id']} ({row.get('git_dir')}) is gone")


def diff(state_dir: Path, ident: str, stat: bool, paths: list[str]) -> int:
    store = _store(state_dir)
    try:
        row = store.resolve_session(ident)
    finally:
        store.close()
    before, after = _snapshots(row)
    folder = _repo_folder(row)
    here = git.find_repo(Path.cwd())
    if here is not None and row.get("git_dir") and here.common_dir == Path(row["git_dir"]):
        folder = Path.cwd()  # paths given relative to where the user stands, as git diff takes them
    try:
        if not paths and row.get("git_scope"):  # a monorepo item's session: its own folder
            paths = [f":(top,literal){row['git_scope']}"]
        code = git.diff(folder, before, after, stat, paths)
    except git.GitError as exc:
        raise RalphError(str(exc)) from None
    return 0 if code in (0, 1) else 1


def find_commit(store: Store, repo_folder: Path, sha: str) -> list[dict[str, Any]]:
    """Sessions during which commit ``sha`` (full, short, or any name git resolves here) was made."""
    wanted = sha.lower()
    repo = git.find_repo(repo_folder)
    if repo is not None:
        with_git = git.resolve_commit(repo, sha)
        wanted = with_git or wanted
    return store.sessions_with_commit(wanted)


def restore(state_dir: Path, ident: str, before: bool) -> int:
    store = _store(state_dir)
    try:
        store.mark_abandoned()
        row = store.find_session(ident) if not _is_sha(ident) or ident.startswith("ses_") else None
        running = store.running_runs()
    finally:
        store.close()
    if running:
        raise RalphError(f"a loop is running in this folder (run {running[0]['id']}, pid {running[0]['pid']}); "
                         "restore when it has ended")
    if row is not None:
        target = _snapshots(row)[0 if before else 1]
        folder = Path(row["git_root"]) if row.get("git_root") else None
        scope = row.get("git_scope")  # a monorepo item's session: its own folder only
        label = f"the state {'before' if before else 'after'} session {row['id']}" + (f" in {scope}/" if scope else "")
    elif _is_sha(ident):  # the undo of a restore: the snapshot it took first
        target, folder, label, scope = ident, None, f"snapshot {ident}", None
    else:
        raise RalphError(f"no session {ident!r} in {state_dir / 'ralph.db'}")
    repo = git.find_repo(folder if folder is not None and folder.is_dir() else Path.cwd())
    if repo is None:
        raise RalphError(f"{folder or Path.cwd()} is not in a git work tree")
    try:
        resolved = git.resolve_commit(repo, target)
        if resolved is None:
            raise RalphError(f"{label}: commit {target} is not in {repo.root}")
        temp = state_dir / "tmp"
        temp.mkdir(parents=True, exist_ok=True)
        now = time.strftime("%Y%m%dT%H%M%S")
        current, _ = git.snapshot(repo, [state_dir], f"ralph: before restoring {label}",
                                  {"Ralph-Restore": target}, temp)
        git.update_refs(repo, {f"{git.REF_PREFIX}restores/{now}-{current[:12]}": current})
        count = git.restore(repo, resolved, current, temp, scope)
    except git.GitError as exc:
        raise RalphError(str(exc)) from None
    print(f"restored {label}: {count} file(s) changed in {repo.root}")
    print(f"to undo: {_undo(state_dir, current)}")
    return 0


def _undo(state_dir: Path, sha: str) -> str:
    import shlex

    from ralph.store import resolve_state_dir

    where = "" if state_dir == resolve_state_dir(None) else f" --state-dir {shlex.quote(str(state_dir))}"
    return f"ralph restore{where} {sha}"


def _is_sha(text: str) -> bool:
    return 7 <= len(text) <= 64 and all(c in "0123456789abcdefABCDEF" for c in text)
