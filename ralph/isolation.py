"""Where each batch item runs: its own folder (``workdir: services/{item}``) and, with
``batch.isolation: worktree``, its own git worktree on branch ``ralph/<loop>/<item>``.

A worktree lives under the state folder while its item runs. When the item ends (however: done,
failed, interrupted) what the agent left uncommitted is committed on the branch, the worktree is
removed and the branch stays; a second run continues it. What a killed ralph left is finished the
same way by the next run.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ralph import git
from ralph.loader import LoopSpec
from ralph.steps import Services

_worktree_lock = threading.Lock()  # git's worktree bookkeeping is not made for concurrent adds and prunes


def branch_name(spec: LoopSpec, item: str) -> str:
    return f"ralph/{spec.name}/{git.safe_branch_part(item)}"


def isolated(spec: LoopSpec) -> bool:
    return spec.config.batch is not None and spec.config.batch.isolation == "worktree"


def prepare(spec: LoopSpec, sv: Services, parallel: int, items: int) -> None:
    """Once per run: what a killed run left behind, and the shared-checkout warning."""
    git.clean_temp(sv.state_dir / "tmp")
    if isolated(spec) or (sv.state_dir / "worktrees").is_dir():
        repo = git.find_repo(spec.workdir)
        if repo is not None:
            with _worktree_lock:
                git.prune(repo)
                _sweep(repo, sv)
    if not isolated(spec) and parallel > 1 and items > 1 and git.find_repo(spec.workdir) is not None:
        sv.console.warn(f"{min(parallel, items)} items run at once in the same git checkout; "
                        "batch.isolation: worktree gives each its own")


def describe(spec: LoopSpec, item: str, reason: str) -> str:
    return f"{reason}; branch {branch_name(spec, item)}" if isolated(spec) else reason


def item_workdir(spec: LoopSpec, item: str, must_exist: bool = True) -> tuple[Path, str | None]:
    if spec.workdir_template is None:
        return spec.workdir, None
    folder = Path(spec.workdir_template.replace("{item}", item))
    try:
        folder = folder.resolve()
        folder.relative_to(spec.workdir)
    except (OSError, RuntimeError, ValueError):
        return folder, f"the item's folder {folder} is outside {spec.workdir}"
    if must_exist and not folder.is_dir():
        return folder, f"the item's folder {folder} does not exist"
    return folder, None


@contextlib.contextmanager
def place(spec: LoopSpec, sv: Services, item: str | None) -> Iterator[tuple[LoopSpec, Services, str | None]]:
    """(spec, services, problem) for this item: its folder, in its worktree when isolated."""
    if item is None or (spec.workdir_template is None and not isolated(spec)):
        yield spec, sv, None
        return
    workdir, problem = item_workdir(spec, item, must_exist=not isolated(spec))  # isolated: on its branch
    if problem is not None or not isolated(spec):
        yield replace(spec, workdir=workdir), replace(sv, workdir=workdir), problem
        return
    repo = git.find_repo(spec.workdir)
    if repo is None:
        yield spec, sv, f"{spec.workdir} is not in a git work tree"
        return
    branch = branch_name(spec, item)
    tree = sv.state_dir / "worktrees" / spec.name / git.safe_branch_part(item)
    try:
        with _worktree_lock:
            _finish_leftover(repo, tree, branch, sv)
            git.add_worktree(repo, tree, branch)
    except (git.GitError, OSError) as exc:
        yield spec, sv, f"cannot make a worktree for branch {branch}: {exc}"
        return
    try:
        try:
            rel = workdir.resolve().relative_to(repo.root.resolve())
        except ValueError:
            yield spec, sv, f"the item's folder {workdir} is not inside {repo.root}"
            return
        inside = tree / rel
        if not inside.is_dir():
            yield spec, sv, f"the item's folder {rel} does not exist on branch {branch}"
            return
        yield replace(spec, workdir=inside), replace(sv, workdir=inside), None
    finally:
        with _worktree_lock:
            _close(repo, tree, branch, sv, item)


def _sweep(repo: git.Repo, sv: Services) -> None:
    """Worktrees a killed run left (of any loop), when no other ralph is running on this state folder:
    what they hold is committed on their branches (``ralph/<loop>/<folder>``), then they go."""
    if any(r["id"] != sv.run_id for r in sv.store.running_runs()):
        return
    for loop_dir in sorted(p for p in (sv.state_dir / "worktrees").glob("*") if p.is_dir()):
        for tree in sorted(p for p in loop_dir.iterdir() if p.is_dir()):
            owner = git.find_repo(tree)
            if owner is not None and owner.common_dir != repo.common_dir:
                continue  # another repository's: its own runs clean it
            try:
                _finish_leftover(repo, tree, f"ralph/{loop_dir.name}/{tree.name}", sv)
            except (git.GitError, OSError) as exc:
                sv.console.warn(f"could not clean up the worktree {tree} a killed run left: {exc}")


def _finish_leftover(repo: git.Repo, tree: Path, branch: str, sv: Services) -> None:
    """A worktree a killed ralph left: keep what the agent wrote (committed on its branch), then remove it."""
    if not tree.exists():
        return
    wt = git.find_repo(tree)
    if wt is not None and wt.root.resolve() == tree.resolve():
        with contextlib.suppress(git.GitError, OSError):
            git.commit_leftovers(wt, branch, "ralph: left uncommitted by an interrupted run", {},
                                 sv.state_dir / "tmp")
    git.remove_worktree(repo, tree)


def _close(repo: git.Repo, tree: Path, branch: str, sv: Services, item: str) -> None:
    rows = [r for r in sv.store.run_sessions(sv.run_id) if r["item"] == item]
    try:
        wt = git.find_repo(tree)
        if wt is not None:
            last = rows[-1] if rows else None
            trailers = {"Ralph-Session": last["id"], "Ralph-Run": last["run_id"],
                        "Ralph-Iteration": str(last["iteration"]), "Ralph-Loop": last["loop"],
                        "Ralph-Item": item, "Trace-Id": last["trace_id"] or ""} if last else {}
            subject = f"ralph: what session {last['id']} left uncommitted" if last else "ralph: left uncommitted"
            sha = git.commit_leftovers(wt, branch, subject, trailers, sv.state_dir / "tmp")
            if sha and last is not None:
                commits = [*json.loads(last.get("commits") or "[]"), sha]
                sv.store.update_session(last["id"], commits=json.dumps(commits))
    except (git.GitError, OSError) as exc:  # kept, not removed: the next run tries again
        sv.console.warn(f"could not commit what was left in the worktree {tree} (branch {branch}): {exc}")
    else:
        git.remove_worktree(repo, tree)
    for row in rows:
        sv.store.update_session(row["id"], git_branch=branch)
