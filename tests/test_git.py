"""ralph.git on real repositories: snapshots that leave the user's state alone, the change between
two, restore, odd file names, an unborn HEAD, leftovers of a killed ralph, and branch names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from gitrepo import git as run_git
from gitrepo import head, make_repo

from ralph import git
from ralph.judge import NoProgress


def repo_at(path: Path) -> git.Repo:
    repo = git.find_repo(path)
    assert repo is not None
    return repo


def test_find_repo_answers_none_outside_git_and_for_a_bare_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git.find_repo(plain) is None
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "bare.git")], check=True)
    assert git.find_repo(tmp_path / "bare.git") is None
    repo = make_repo(tmp_path / "r")
    (repo / "sub").mkdir()
    found = repo_at(repo / "sub")
    assert found.root == repo and found.git_dir == repo / ".git" and found.common_dir == repo / ".git"


def test_a_snapshot_leaves_head_index_and_files_alone_and_keeps_the_state_folder_out(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n", "sub/b.txt": "b\n"})
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "new.txt").write_text("new\n")
    (repo / "x.log").write_text("ignored\n")
    (repo / "a.txt").write_text("changed\n")
    (repo / ".ralph" / "logs").mkdir(parents=True)
    (repo / ".ralph" / "ralph.db").write_text("state\n")
    index = (repo / ".git" / "index").read_bytes()
    status = run_git(repo, "status", "--porcelain")
    sha, current = git.snapshot(repo_at(repo), [repo / ".ralph"], "subject", {"Ralph-Session": "ses_x", "Empty": ""})
    assert current == head(repo)
    assert (repo / ".git" / "index").read_bytes() == index and run_git(repo, "status", "--porcelain") == status
    names = run_git(repo, "ls-tree", "-r", "--name-only", sha).split()
    assert names == [".gitignore", "a.txt", "new.txt", "sub/b.txt"]
    assert run_git(repo, "show", f"{sha}:a.txt") == "changed\n"
    body = run_git(repo, "cat-file", "commit", sha)
    assert "author ralph <ralph@localhost>" in body and "Ralph-Session: ses_x" in body and "Empty:" not in body
    assert run_git(repo, "rev-parse", f"{sha}^").strip() == current
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"{git.TEMP_PREFIX}*-{os.getpid()}"))


def test_a_state_folder_someone_committed_is_still_left_out(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n", ".ralph/old.txt": "committed by mistake\n"})
    tree = git.write_tree(repo_at(repo), [repo / ".ralph"])
    assert run_git(repo, "ls-tree", "-r", "--name-only", tree).split() == ["a.txt"]


def test_change_counts_lines_files_and_commits_with_odd_names(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "1\n2\n3\n", "bin.dat": "x"})
    r = repo_at(repo)
    before, head_before = git.snapshot(r, [], "before", {})
    odd = "sp ace\tand\nnewline é.txt"
    (repo / odd).write_text("x\ny\n")
    (repo / "a.txt").write_text("1\nTWO\n3\n")
    (repo / "bin.dat").write_bytes(b"\0\1\2")
    run_git(repo, "add", "a.txt")
    run_git(repo, "commit", "-q", "-m", "agent")
    after, head_after = git.snapshot(r, [], "after", {})
    change = git.change(r, before, after, head_before, head_after)
    assert set(change.changed_files) == {"a.txt", "bin.dat", odd}
    assert (change.files_changed, change.insertions, change.deletions) == (3, 3, 1)  # binary: no line counts
    assert change.commits == (head(repo),) and change.changed
    same = git.change(r, after, after, head_after, head_after)
    assert not same.changed and same.files_changed == 0


def test_an_unborn_head_snapshots_without_a_parent(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    run_git(repo, "init", "-q")
    (repo / "f.txt").write_text("f\n")
    r = repo_at(repo)
    sha, current = git.snapshot(r, [], "first", {})
    assert current is None
    assert run_git(repo, "rev-list", "--parents", "-n1", sha).split() == [sha]
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "first commit")
    after, now = git.snapshot(r, [], "after", {})
    assert git.change(r, sha, after, None, now).commits == (head(repo),)


def test_restore_writes_deletes_and_keeps_modes_without_touching_the_index(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n", "run.sh": "#!/bin/sh\n", "d/e/f.txt": "f\n"})
    os.chmod(repo / "run.sh", 0o755)
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "exec")
    r = repo_at(repo)
    target, _ = git.snapshot(r, [], "target", {})
    index = (repo / ".git" / "index").read_bytes()
    (repo / "a.txt").write_text("changed\n")
    (repo / "run.sh").unlink()
    (repo / "d/e/f.txt").unlink()
    (repo / "extra" / "deep").mkdir(parents=True)
    (repo / "extra" / "deep" / "new.txt").write_text("new\n")
    current, _ = git.snapshot(r, [], "current", {})
    assert git.restore(r, target, current) == 4
    assert (repo / "a.txt").read_text() == "a\n" and (repo / "d/e/f.txt").read_text() == "f\n"
    assert os.access(repo / "run.sh", os.X_OK)
    assert not (repo / "extra").exists()
    assert (repo / ".git" / "index").read_bytes() == index
    assert run_git(repo, "status", "--porcelain") == ""


def test_leftover_temporary_indexes_of_dead_ralphs_are_removed(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = temp / f"{git.TEMP_PREFIX}abc-{dead.pid}"
    stale_lock = temp / f"{git.TEMP_PREFIX}abc-{dead.pid}.lock"
    mine = temp / f"{git.TEMP_PREFIX}def-{os.getpid()}"
    for path in (stale, stale_lock, mine):
        path.write_text("")
    git.clean_temp(temp)
    assert not stale.exists() and not stale_lock.exists() and mine.exists()


def test_a_users_index_lock_does_not_stop_a_snapshot_and_stays_theirs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    lock = repo / ".git" / "index.lock"
    lock.write_text("")  # a git command of the user's is running (or died) right now
    (repo / "n.txt").write_text("n\n")
    sha, _ = git.snapshot(repo_at(repo), [], "s", {})
    assert "n.txt" in run_git(repo, "ls-tree", "--name-only", sha)
    assert lock.exists() and lock.read_text() == ""


def test_leftovers_are_committed_on_the_branch_without_hooks(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    for name in ("pre-commit", "post-checkout", "post-commit"):
        hook = repo / ".git" / "hooks" / name
        hook.write_text(f"#!/bin/sh\ntouch {tmp_path}/hook-ran-{name}\nexit 1\n")
        os.chmod(hook, 0o755)
    r = repo_at(repo)
    tree = tmp_path / "wt"
    git.add_worktree(r, tree, "ralph/l/item")
    (tree / "made.txt").write_text("m\n")
    sha = git.commit_leftovers(repo_at(tree), "ralph/l/item", "left", {"Ralph-Session": "ses_1"})
    assert sha == run_git(repo, "rev-parse", "ralph/l/item").strip()
    assert git.commit_leftovers(repo_at(tree), "ralph/l/item", "left", {}) is None  # nothing new
    git.remove_worktree(r, tree)
    assert not tree.exists() and not list(tmp_path.glob("hook-ran-*"))
    assert run_git(repo, "show", "ralph/l/item:made.txt") == "m\n"


@pytest.mark.parametrize(("item", "start"), [
    ("api", "api"), ("ok-1_2.3", "ok-1_2.3"), ("web/ui", "web-ui-"), ("a..b", "a.b-"), ("x.lock", "x-lock-"),
    ("~^:?*[ \\", "item-"), ("..hidden", "hidden-"), ("é", "item-"),
])
def test_item_names_become_safe_branch_names(item: str, start: str) -> None:
    name = git.safe_branch_part(item)
    assert name == item if item == start else name.startswith(start) and len(name) == len(start) + 8
    full = f"ralph/loop/{name}"
    assert subprocess.run(["git", "check-ref-format", "--branch", full], capture_output=True).returncode == 0


def test_items_that_differ_only_in_unsafe_characters_get_different_branches() -> None:
    names = {git.safe_branch_part(i) for i in ("web/ui", "web-ui", "web ui", "web:ui")}
    assert len(names) == 4 and git.safe_branch_part("web/ui") == git.safe_branch_part("web/ui")


def test_no_progress_counts_unchanged_iterations_in_a_row() -> None:
    same = git.Change(0, 0, 0, (), ())
    edit = git.Change(1, 1, 0, ("a",), ())
    commit = git.Change(0, 0, 0, (), ("abc",))
    judge = NoProgress(2)
    assert judge.observe("s1", edit) is None
    assert judge.observe("s2", same) is None
    assert judge.observe("s3", commit) is None  # a commit is progress
    assert judge.observe("s4", same) is None
    assert judge.observe("s5", None) is None  # no snapshot: unknown, the count starts again
    assert judge.observe("s6", same) is None
    assert judge.observe("s7", same) == "no progress in 2 iterations: nothing changed since s3"
    fresh = NoProgress(1)
    assert fresh.observe("t1", same) == "no progress in 1 iteration: nothing changed since t1"


def test_a_users_signing_config_does_not_stop_a_snapshot(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    run_git(repo, "config", "commit.gpgSign", "true")
    run_git(repo, "config", "gpg.program", str(tmp_path / "no-such-gpg"))
    sha, _ = git.snapshot(repo_at(repo), [], "s", {})
    assert "gpgsig" not in run_git(repo, "cat-file", "commit", sha)
