"""Every git call ralph makes: snapshots, diffs, restores and worktrees.

Always an argv list, never shell text. Snapshots go through a private index file (a copy of the
user's, so git only re-hashes what changed) and ``commit-tree``, so the user's HEAD, branch, index,
stash, config and hooks are never touched; the commits are kept alive by refs under ``refs/ralph/``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REF_PREFIX = "refs/ralph/"
# ralph's own commits carry this identity, so a user with no git identity configured still gets snapshots.
IDENTITY = {"GIT_AUTHOR_NAME": "ralph", "GIT_AUTHOR_EMAIL": "ralph@localhost",
            "GIT_COMMITTER_NAME": "ralph", "GIT_COMMITTER_EMAIL": "ralph@localhost"}
# Inherited variables that would point git at another repository, index or object store.
_SCRUB = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
          "GIT_NAMESPACE", "GIT_PREFIX", "GIT_COMMON_DIR")
TEMP_PREFIX = "ralph-index-"


class GitError(Exception):
    """git is missing, the folder is not a work tree, or a command failed."""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    # GIT_OPTIONAL_LOCKS=0: reads never refresh (and so never lock) the user's index.
    env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    env.update(extra or {})
    return env


def git(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, input: bytes | None = None,
        check: bool = True) -> str:
    """Run ``git ARGS`` in ``cwd``; its stdout, or GitError with git's own message."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=_env(extra_env), input=input, capture_output=True,
                              check=False, timeout=600)
    except FileNotFoundError:
        raise GitError("git is not installed (not found on PATH)") from None
    except OSError as exc:
        raise GitError(f"cannot run git in {cwd}: {exc.strerror or exc}") from None
    if check and proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        command = next((a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-c")),
                       "")
        raise GitError(f"git {command}: {message[-1] if message else f'exit {proc.returncode}'}")
    return proc.stdout.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Repo:
    """The work tree a folder belongs to."""

    root: Path  # the top of the work tree
    git_dir: Path  # this work tree's own git folder (its index lives there)
    common_dir: Path  # objects and refs, shared by all worktrees

    def run(self, args: list[str], **kw: object) -> str:
        return git(args, self.root, **kw)  # type: ignore[arg-type]


def find_repo(folder: Path) -> Repo | None:
    """The work tree ``folder`` is in, or None (not a repository, a bare one, or no git)."""
    try:
        out = git(["rev-parse", "--is-inside-work-tree", "--show-toplevel", "--absolute-git-dir",
                   "--git-common-dir"], folder).splitlines()
    except GitError:
        return None
    if len(out) < 4 or out[0] != "true":
        return None
    root, git_dir = Path(out[1]), Path(out[2])
    common = Path(out[3]) if os.path.isabs(out[3]) else (folder / out[3])
    return Repo(root, git_dir, common.resolve())


def missing_in_repo(folder: Path) -> bool:
    """git is not on PATH, yet ``folder`` looks like part of a repository (a ``.git`` above it)."""
    if shutil.which("git") is not None:
        return False
    return any((parent / ".git").exists() for parent in (folder, *folder.parents))


def head(repo: Repo) -> str | None:
    out = git(["rev-parse", "-q", "--verify", "HEAD^{commit}"], repo.root, check=False).strip()
    return out or None


def _excludes(repo: Repo, exclude: list[Path]) -> list[str]:
    """Pathspecs that keep ``exclude`` (the state folder) out, when they lie inside the work tree."""
    specs = []
    for path in exclude:
        try:
            rel = path.resolve().relative_to(repo.root.resolve())
        except ValueError:
            continue
        if str(rel) != ".":
            specs.append(f":(exclude,top,literal){rel.as_posix()}")
    return specs


@functools.cache
def _ignored(root: Path, rel: str) -> bool:
    """Whether git ignores ``rel`` (the state folder) in that work tree; asked once per run."""
    return bool(git(["check-ignore", "--", rel], root, check=False).strip())


@contextlib.contextmanager
def _private_index(repo: Repo, temp_dir: Path | None, seed: bool = True) -> Iterator[dict[str, str]]:
    """A temporary index file, seeded with a copy of the user's (its stat data spares re-hashing)."""
    folder = temp_dir or Path(tempfile.gettempdir())
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{os.getpid()}", dir=folder)
    os.close(fd)
    path = Path(name)
    try:
        user_index = repo.git_dir / "index"
        if seed and user_index.is_file():
            with contextlib.suppress(OSError):
                shutil.copyfile(user_index, path)
        if path.stat().st_size == 0:
            path.unlink()  # git wants no file rather than an empty one
        yield {"GIT_INDEX_FILE": str(path)}
    finally:
        for leftover in (path, Path(f"{path}.lock")):
            with contextlib.suppress(OSError):
                leftover.unlink()


def clean_temp(temp_dir: Path) -> None:
    """Index files a killed ralph left behind (only ralph's own, in ralph's own folder)."""
    with contextlib.suppress(OSError):
        for path in temp_dir.glob(TEMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                pid = int(path.name.split("-")[-1].split(".")[0])
                if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                    path.unlink()


def write_tree(repo: Repo, exclude: list[Path], temp_dir: Path | None = None) -> str:
    """The tree of the work tree as it is now: tracked and untracked-but-not-ignored files."""
    with _private_index(repo, temp_dir) as env:
        specs = _excludes(repo, exclude)
        # An exclude naming an ignored folder makes `git add` fail ("paths are ignored"): those stay out anyway.
        kept = [spec for spec in specs if not _ignored(repo.root, spec.split(")", 1)[1])]
        # splitIndex off: a split private index would write a shared index file into the user's .git
        repo.run(["-c", "core.splitIndex=false", "add", "-A", "--ignore-errors", "--", ":/", *kept], extra_env=env)
        for spec in specs:  # a state folder someone once committed stays out too
            repo.run(["rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", spec.replace("exclude,", "")],
                     extra_env=env)
        return repo.run(["write-tree"], extra_env=env).strip()


def commit_tree(repo: Repo, tree: str, parents: list[str], message: str) -> str:
    args = ["commit-tree", "--no-gpg-sign", tree]  # a user's commit.gpgSign would ask for a passphrase
    for parent in parents:
        args += ["-p", parent]
    return repo.run(args, extra_env=IDENTITY, input=message.encode("utf-8")).strip()


def message(subject: str, trailers: dict[str, str]) -> str:
    lines = [f"{k}: {v}" for k, v in trailers.items() if v]
    return subject + "\n\n" + "\n".join(lines) + "\n"


def snapshot(repo: Repo, exclude: list[Path], subject: str, trailers: dict[str, str],
             temp_dir: Path | None = None) -> tuple[str, str | None]:
    """A commit of the work tree as it is (parent: HEAD); returns (snapshot SHA, HEAD SHA)."""
    current_head = _helpers().submit(head, repo)  # HEAD read while `git add` hashes: two processes, two cores
    tree = write_tree(repo, exclude, temp_dir)
    current = current_head.result()
    return commit_tree(repo, tree, [current] if current else [], message(subject, trailers)), current


@functools.cache
def _helpers() -> ThreadPoolExecutor:
    """Threads for git commands that can run beside another (each mostly waits for its process)."""
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="ralph-git")


def update_refs(repo: Repo, refs: dict[str, str]) -> None:
    """Several refs in one call (one transaction)."""
    lines = "".join(f"update {name} {sha}\n" for name, sha in refs.items())
    repo.run(["update-ref", "--stdin"], input=lines.encode("utf-8"))


@dataclass(frozen=True)
class Change:
    files_changed: int
    insertions: int
    deletions: int
    changed_files: tuple[str, ...]
    commits: tuple[str, ...]  # made on HEAD in between, oldest first

    @property
    def changed(self) -> bool:
        return bool(self.changed_files or self.commits)


def change(repo: Repo, before: str, after: str, head_before: str | None, head_after: str | None,
           scope: str | None = None) -> Change:
    """What changed from one snapshot to the other, and the commits made on HEAD in between; with
    ``scope`` (a folder, from the top) only what concerns it."""
    files: list[str] = []
    ins = dels = 0
    only = ["--", f":(top,literal){scope}"] if scope else []
    if before != after:
        out = repo.run(["diff-tree", "-r", "-z", "--numstat", "--no-renames", before, after, *only])
        for entry in filter(None, out.split("\0")):  # "ADDED<TAB>DELETED<TAB>PATH" each
            added, deleted, path = entry.split("\t", 2)
            ins += int(added) if added.isdigit() else 0  # "-" for a binary file
            dels += int(deleted) if deleted.isdigit() else 0
            files.append(path)
    commits: list[str] = []
    if head_after and head_after != head_before:
        span = [head_after] + ([f"^{head_before}"] if head_before else [])
        out = repo.run(["rev-list", "--reverse", "--max-count=1000", *span, *only], check=False)
        commits = out.split()
    return Change(len(files), ins, dels, tuple(files), tuple(commits))


def resolve_commit(repo: Repo, name: str) -> str | None:
    out = repo.run(["rev-parse", "-q", "--verify", "--end-of-options", f"{name}^{{commit}}"], check=False).strip()
    return out or None


def diff(repo_dir: Path, before: str, after: str, stat: bool, paths: list[str]) -> int:
    """git's own unified diff (or --stat) of two snapshots, straight to our stdout."""
    args = ["git", "--no-pager", "diff", "--stat" if stat else "--patch", before, after, "--", *paths]
    try:
        return subprocess.run(args, cwd=repo_dir, env=_env({"LC_ALL": os.environ.get("LC_ALL", "")}),
                              check=False).returncode
    except FileNotFoundError:
        raise GitError("git is not installed (not found on PATH)") from None


def restore(repo: Repo, target: str, current: str, temp_dir: Path | None = None, scope: str | None = None) -> int:
    """Make the work tree's files (under ``scope``, else all) those of ``target`` (a snapshot), given
    ``current`` (a snapshot of them now). Only files differ afterwards: HEAD, branch and index stay."""
    only = ["--", f":(top,literal){scope}"] if scope else []
    out = repo.run(["diff-tree", "-r", "-z", "--no-renames", "--name-status", current, target, *only])
    parts = out.split("\0")
    remove: list[str] = []
    write: list[str] = []
    for i in range(0, len(parts) - 1, 2):
        (remove if parts[i].startswith("D") else write).append(parts[i + 1])
    for rel in remove:
        path = repo.root / rel
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != repo.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    if write:
        with _private_index(repo, temp_dir, seed=False) as env:
            repo.run(["read-tree", target], extra_env=env)
            repo.run(["checkout-index", "-f", "-z", "--stdin"], extra_env=env,
                     input=("\0".join(write) + "\0").encode("utf-8", "surrogateescape"))
    return len(remove) + len(write)


# -- worktrees --------------------------------------------------------------------------------------

def safe_branch_part(text: str) -> str:
    """A name git accepts as one part of a branch name (``git check-ref-format`` rules). An item that had
    to be changed gets a short hash of itself, so ``web/ui`` and ``web-ui`` never share a branch."""
    out = []
    for ch in text:
        out.append(ch if (ch.isalnum() and ch.isascii()) or ch in "-_." else "-")
    name = "".join(out).strip(".-") or "item"
    while ".." in name:
        name = name.replace("..", ".")
    if name.endswith(".lock"):
        name = name[:-5] + "-lock"
    name = name[:80]
    if name != text:
        import hashlib

        name += "-" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return name


def branch_exists(repo: Repo, branch: str) -> bool:
    return bool(repo.run(["rev-parse", "-q", "--verify", f"refs/heads/{branch}"], check=False).strip())


def add_worktree(repo: Repo, path: Path, branch: str) -> None:
    """A worktree at ``path`` on ``branch`` (made from HEAD when new; continued when it exists)."""
    # A killed `worktree add` leaves its entry locked ("initializing"), which prune would keep.
    git(["worktree", "unlock", str(path)], repo.root, check=False)
    prune(repo)
    if path.exists():  # a half-made one from a killed run
        remove_worktree(repo, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    no_hooks = ["-c", "core.hooksPath=/dev/null"]  # the user's post-checkout hook is for their checkouts
    if branch_exists(repo, branch):
        repo.run([*no_hooks, "worktree", "add", "--quiet", str(path), branch])
    else:
        repo.run([*no_hooks, "worktree", "add", "--quiet", "-b", branch, str(path), "HEAD"])


def remove_worktree(repo: Repo, path: Path) -> None:
    git(["worktree", "remove", "--force", "--force", str(path)], repo.root, check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    prune(repo)


def prune(repo: Repo) -> None:
    git(["worktree", "prune"], repo.root, check=False)


def commit_leftovers(worktree: Repo, branch: str, subject: str, trailers: dict[str, str],
                     temp_dir: Path | None = None) -> str | None:
    """What the agent left uncommitted in its worktree, committed on ``branch`` (no hooks: commit-tree).
    Returns the new commit, or None when there was nothing to commit."""
    tree = write_tree(worktree, [], temp_dir)
    current = head(worktree)
    if current and worktree.run(["rev-parse", f"{current}^{{tree}}"]).strip() == tree:
        return None
    sha = commit_tree(worktree, tree, [current] if current else [], message(subject, trailers))
    worktree.run(["update-ref", f"refs/heads/{branch}", sha, current or ""])
    return sha
