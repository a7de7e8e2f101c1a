"""What each session did to the code: a snapshot of the work tree before and after every iteration,
the change between them, and the commits made on HEAD meanwhile; into the history and the span.

A snapshot that cannot be taken (git missing, a broken repository, a full disk) never fails the
loop: the run warns once and goes on without it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ralph import git

if TYPE_CHECKING:  # `ralph sessions` and `show` use the formatting below without the loop machinery
    from ralph.session import Session
    from ralph.steps import Services
    from ralph.telemetry import Span

_warned: set[str] = set()  # run IDs that already told the user snapshots are off
_warn_lock = threading.Lock()


@dataclass(frozen=True)
class Before:
    snapshot: str
    head: str | None


# Per run ID and folder: a batch's items share one folder, and asking git once per item was a third of
# a wide batch's CPU. Once per run, so a repository made (or git installed) between runs is still seen.
# Under a lock per folder: the 64 items a batch starts at once in one folder would otherwise each ask
# before the first answer, while items in folders of their own (`workdir: services/{item}`) still ask
# side by side.
_repos: dict[tuple[str, Path], git.Repo | None] = {}
_asking: dict[tuple[str, Path], threading.Lock] = {}
_asking_lock = threading.Lock()


def _find_repo(run_id: str, workdir: Path) -> git.Repo | None:
    key = (run_id, workdir)
    if key not in _repos:
        with _asking_lock:
            lock = _asking.setdefault(key, threading.Lock())
        with lock:
            if key not in _repos:
                _repos[key] = git.find_repo(workdir)
    return _repos[key]


@functools.cache
def _missing_in_repo(run_id: str, workdir: Path) -> bool:
    """git.missing_in_repo, asked once per run and folder (it searches PATH): not by each of 2,000 items."""
    return git.missing_in_repo(workdir)


def session_ref(session_id: str, which: str) -> str:
    return f"{git.REF_PREFIX}sessions/{session_id}/{which}"


def trailers(session: Session, trace_id: str | None) -> dict[str, str]:
    return {"Ralph-Session": session.id, "Ralph-Run": session.run_id, "Ralph-Iteration": str(session.iteration),
            "Ralph-Loop": session.loop, "Ralph-Item": session.item or "", "Trace-Id": trace_id or ""}


class Provenance:
    """Snapshots for one item's loop (or the only loop) in ``workdir``; inert when off or outside git."""

    def __init__(self, sv: Services, workdir: Path, enabled: bool, scoped: bool = False) -> None:
        self.sv = sv
        self.repo = _find_repo(sv.run_id, workdir) if enabled else None
        self.temp = sv.state_dir / "tmp"
        # `workdir: services/{item}`: an item's change is what it did in its own folder, not its neighbours'
        self.scope = None
        if scoped and self.repo is not None:
            with contextlib.suppress(ValueError):
                rel = workdir.resolve().relative_to(self.repo.root.resolve()).as_posix()
                self.scope = None if rel == "." else rel
        if enabled and self.repo is None and _missing_in_repo(sv.run_id, workdir):
            self._fail("git is not installed", git.GitError("not found on PATH"))

    @property
    def active(self) -> bool:
        return self.repo is not None

    def _fail(self, what: str, exc: Exception) -> None:
        self.repo = None
        with _warn_lock:
            first = self.sv.run_id not in _warned
            _warned.add(self.sv.run_id)
        if first:
            self.sv.console.warn(f"git snapshots are off for this run: {what}: {exc}")
            self.sv.runlog.warning(f"git snapshots off: {what}: {exc}")

    def _snapshot(self, session: Session, span: Span, which: str) -> tuple[str, str | None]:
        assert self.repo is not None
        self.temp.mkdir(parents=True, exist_ok=True)
        sha, head = git.snapshot(self.repo, [self.sv.state_dir], f"ralph: {which} session {session.id}",
                                 {**trailers(session, span.trace_id or None), "Ralph-Snapshot": which}, self.temp)
        git.update_refs(self.repo, {session_ref(session.id, which): sha})
        return sha, head

    def before(self, session: Session, span: Span) -> Before | None:
        if self.repo is None:
            return None
        self.sv.store.flush()  # the previous iteration's end is not left waiting through git
        self.sv.runlog.flush()
        try:
            sha, head = self._snapshot(session, span, "before")
            self.sv.store.update_session(session.id, git_before=sha, git_dir=str(self.repo.common_dir),
                                         git_root=str(self.repo.root), git_scope=self.scope)
        except (git.GitError, OSError) as exc:
            self._fail("the snapshot before the iteration failed", exc)
            return None
        return Before(sha, head)

    def after(self, before: Before | None, session: Session, span: Span) -> git.Change | None:
        if self.repo is None or before is None:
            return None
        try:
            sha, head = self._snapshot(session, span, "after")
            change = git.change(self.repo, before.snapshot, sha, before.head, head, self.scope)
        except (git.GitError, OSError) as exc:
            self._fail("the snapshot after the iteration failed", exc)
            return None
        self.sv.store.update_session(session.id, **record(change, sha, head))
        span.set_many({"ralph.git.files_changed": change.files_changed, "ralph.git.insertions": change.insertions,
                       "ralph.git.deletions": change.deletions, "vcs.ref.head.revision": head})
        return change


def record(change: git.Change, after: str, head: str | None) -> dict[str, Any]:
    return {"git_after": after, "git_head": head, "files_changed": change.files_changed,
            "insertions": change.insertions, "deletions": change.deletions,
            "commits": json.dumps(list(change.commits)), "changed_files": json.dumps(list(change.changed_files))}


def compact_change(change: git.Change) -> str:
    commits = f" {len(change.commits)}c" if change.commits else ""
    return f"+{change.insertions} -{change.deletions} {change.files_changed}f{commits}"


def compact(row: dict[str, Any]) -> str:
    """``+12 -3 2f`` for the sessions table; empty without a snapshot."""
    if row.get("files_changed") is None:
        return ""
    listed = row.get("commits") or []
    commits = len(json.loads(listed) if isinstance(listed, str) else listed)
    return (f"+{row.get('insertions') or 0} -{row.get('deletions') or 0} {row['files_changed']}f"
            + (f" {commits}c" if commits else ""))


def show_lines(row: dict[str, Any]) -> list[str]:
    """``ralph show``: the session's change, its snapshots and commits."""
    if not row.get("git_after"):
        return []
    commits = row.get("commits") or []
    files = row.get("changed_files") or []
    lines = [f"git: {row.get('files_changed') or 0} file(s) changed, +{row.get('insertions') or 0} "
             f"-{row.get('deletions') or 0}" + (f", {len(commits)} commit(s)" if commits else "")
             + (f"  branch {row['git_branch']}" if row.get("git_branch") else "")
             + (f"  in {row['git_scope']}/" if row.get("git_scope") else ""),
             f"  snapshots {row.get('git_before')} -> {row['git_after']}  (ralph diff {row['id']})"]
    if commits:
        lines.append("  commits " + " ".join(c[:12] for c in commits))
    lines += [f"  {path}" for path in files[:50]]
    if len(files) > 50:
        lines.append(f"  ... and {len(files) - 50} more")
    return lines


def decode(row: dict[str, Any]) -> dict[str, Any]:
    """A history row for JSON output: the JSON-list columns as lists."""
    out = dict(row)
    for key in ("commits", "changed_files"):
        if isinstance(out.get(key), str):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(out[key])
    return out
