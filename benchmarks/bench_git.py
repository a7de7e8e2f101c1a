"""Git snapshots on a repository of 10,000 files (100 folders of 100, committed; 10 of them edited
and 5 new untracked ones, as after an agent's iteration): ralph's snapshot (``ralph.git.snapshot``:
a private copy of the index, ``add -A`` with the state folder excluded, ``write-tree``,
``commit-tree``) against the plain ``cp .git/index tmp && GIT_INDEX_FILE=tmp git add -A && git
write-tree`` measured in the same run, alternating. Goal: ratio ≤ 1.5. Also the cost a whole
iteration adds (two snapshots, their refs, and the change between them): goal ≤ 500 ms.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _bench import median, result, scratch

from ralph import git

FILES, FOLDERS, ROUNDS = 10_000, 100, 9
IDENT = ["-c", "user.name=bench", "-c", "user.email=bench@example.com", "-c", "commit.gpgsign=false"]


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    per = FILES // FOLDERS
    for d in range(FOLDERS):
        folder = repo / f"pkg{d:03d}"
        folder.mkdir()
        for f in range(per):
            (folder / f"mod{f:03d}.py").write_text(f"# module {d}/{f}\n" + "x = 1\n" * 20)
    subprocess.run(["git", *IDENT, "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", *IDENT, "commit", "-q", "-m", "10,000 files"], cwd=repo, check=True)
    for d in range(10):
        with open(repo / f"pkg{d:03d}" / "mod000.py", "a") as fh:
            fh.write("y = 2\n")
    for n in range(5):
        (repo / f"new{n}.py").write_text("z = 3\n")
    return repo


def baseline(repo: Path, temp: Path) -> float:
    index = temp / "plain-index"
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    start = time.perf_counter()
    shutil.copyfile(repo / ".git" / "index", index)
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "write-tree"], cwd=repo, env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    index.unlink()
    return elapsed


def snapshot(repo: git.Repo, state: Path, temp: Path) -> float:
    start = time.perf_counter()
    git.snapshot(repo, [state], "bench", {"Ralph-Session": "ses_bench"}, temp)
    return time.perf_counter() - start


def iteration(repo: git.Repo, state: Path, temp: Path, n: int) -> float:
    start = time.perf_counter()
    before, head_before = git.snapshot(repo, [state], "before", {}, temp)
    git.update_refs(repo, {f"refs/ralph/bench/{n}/before": before})
    after, head_after = git.snapshot(repo, [state], "after", {}, temp)
    git.update_refs(repo, {f"refs/ralph/bench/{n}/after": after})
    git.change(repo, before, after, head_before, head_after)
    return time.perf_counter() - start


def main() -> None:
    with scratch("git") as root:
        repo_path = make_repo(root)
        state = repo_path / ".ralph"  # inside the repository and not ignored: the harder case
        state.mkdir()
        (state / "ralph.db").write_text("x")
        temp = Path(tempfile.mkdtemp(dir=root))
        repo = git.find_repo(repo_path)
        assert repo is not None
        ours, plain, whole = [], [], []
        snapshot(repo, state, temp)  # warm the file system cache for both
        baseline(repo_path, temp)
        for n in range(ROUNDS):
            plain.append(baseline(repo_path, temp))
            ours.append(snapshot(repo, state, temp))
            whole.append(iteration(repo, state, temp, n))
        mine, base = median(ours), median(plain)
        result("git_snapshot_10k_files", ralph=mine * 1000, baseline=base * 1000, ratio=mine / base, unit="ms",
               goal="ratio <= 1.5 against cp index + git add -A + write-tree", ok=mine / base <= 1.5)
        per_iteration = median(whole)
        result("git_per_iteration_10k_files", ralph=per_iteration * 1000, baseline=None, unit="ms",
               goal="<= 500 ms (two snapshots, refs, change)", ok=per_iteration <= 0.5)


if __name__ == "__main__":
    main()
