"""Batch items in their own git worktrees (`batch.isolation: worktree`) and their own folders
(`workdir: services/{item}`), through the real CLI on real repositories, kill -9 included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from gitrepo import git, head, make_repo
from handshake import wait_for

from helpers import PY, ralph, write_loop, yaml_list
from ralph.git import safe_branch_part

# Writes <item>.txt (a line per iteration), commits it when $COMMIT names the item, records its cwd,
# waits at a barrier of marker files when $BARRIER is set (so parallel items really overlap).
AGENT = r"""
import json, os, pathlib, subprocess, sys, time
e = os.environ
item = e["RALPH_ITEM"]
flat = item.replace("/", "_")
out = pathlib.Path(e["OUT"]); out.mkdir(parents=True, exist_ok=True)
(out / f"{flat}-{e['RALPH_ITERATION']}.json").write_text(json.dumps({"cwd": os.getcwd()}))
pathlib.Path(f"{item}.txt").parent.mkdir(parents=True, exist_ok=True)
with open(f"{item}.txt", "a") as fh:
    fh.write(f"iteration {e['RALPH_ITERATION']} of {item}\n")
if item in e.get("COMMIT", "").split(","):
    ident = ["-c", "user.name=Agent", "-c", "user.email=agent@example.com"]
    subprocess.run(["git", *ident, "add", "-A"], check=True)
    subprocess.run(["git", *ident, "commit", "-q", "-m", f"agent: {item}"], check=True)
if e.get("OUTSIDE"):  # also touch something outside the item's folder
    pathlib.Path("..", f"outside-{flat}.txt").write_text("elsewhere\n")
barrier = e.get("BARRIER")
if barrier:
    folder = pathlib.Path(barrier); folder.mkdir(parents=True, exist_ok=True)
    (folder / flat).touch()
    while len(list(folder.iterdir())) < int(e["BARRIER_SIZE"]):
        time.sleep(0.01)
hang = e.get("HANG")
if hang:
    pathlib.Path(hang).touch()
    time.sleep(600)
"""


def batch_loop(folder: Path, repo: Path, items: list[str], extra_env: dict[str, str] | None = None,
               parallel: int = 1, isolation: str = "worktree", workdir: str | None = None,
               iterations: int = 1) -> Path:
    script = folder / "agent.py"
    script.write_text(AGENT)
    env = {"OUT": str(folder / "out"), **(extra_env or {})}
    return write_loop(folder, f"""
        name: iso
        workdir: {workdir or repo}
        env: {json.dumps(env)}
        agent:
          command: {yaml_list([PY, str(script)])}
        until:
          max_iterations: {iterations}
        batch:
          items: {json.dumps(items)}
          parallel: {parallel}
          isolation: {isolation}
    """)


def worktrees(repo: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def sessions() -> list[dict[str, object]]:
    result = ralph("sessions", "--json", "--limit", "100")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_parallel_items_run_in_their_own_worktrees_and_leave_branches(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head_before, index_before = head(repo), (repo / ".git" / "index").read_bytes()
    loop = batch_loop(tmp_path, repo, ["api", "web/ui"], parallel=2,
                      extra_env={"BARRIER": str(tmp_path / "barrier"), "BARRIER_SIZE": "2", "COMMIT": "api"})
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    # The user's checkout is untouched: same HEAD, same index, no item files, no leftover worktrees.
    assert head(repo) == head_before and (repo / ".git" / "index").read_bytes() == index_before
    assert git(repo, "status", "--porcelain") == ""
    assert worktrees(repo) == [str(repo)]
    # Each agent ran in a worktree of its own, on its own branch.
    cwds = {json.loads(p.read_text())["cwd"] for p in (tmp_path / "out").glob("*.json")}
    assert len(cwds) == 2 and str(repo) not in cwds
    ui_branch = f"ralph/iso/{safe_branch_part('web/ui')}"
    assert "branch ralph/iso/api" in result.stdout and f"branch {ui_branch}" in result.stdout
    api_log = git(repo, "log", "--format=%s", "ralph/iso/api").splitlines()
    assert api_log == ["agent: api", "initial"]  # committed by the agent: nothing left to commit
    ui = git(repo, "log", "--format=%B", "-1", ui_branch)
    ui_session = next(s for s in sessions() if s["item"] == "web/ui")
    assert f"Ralph-Session: {ui_session['id']}" in ui and "Ralph-Loop: iso" in ui and "Ralph-Item: web/ui" in ui
    assert git(repo, "show", f"{ui_branch}:web/ui.txt") == "iteration 1 of web/ui\n"
    assert ui_session["git_branch"] == ui_branch
    assert len(json.loads(json.dumps(ui_session["commits"]))) == 1  # the commit of what it left

    # A second run continues each item's branch.
    again = ralph("run", str(loop), "-q")
    assert again.returncode == 0, again.stderr
    assert git(repo, "show", f"{ui_branch}:web/ui.txt") == "iteration 1 of web/ui\niteration 1 of web/ui\n"
    assert git(repo, "status", "--porcelain") == "" and worktrees(repo) == [str(repo)]


def test_isolation_outside_git_is_an_error_at_its_line(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    loop = batch_loop(tmp_path, plain, ["a"])
    result = ralph("validate", str(loop))
    assert result.returncode == 2
    line = next(i for i, t in enumerate(loop.read_text().splitlines(), 1) if t.strip().startswith("isolation:"))
    assert f"{loop}:{line}:" in result.stderr and "batch.isolation" in result.stderr


def test_parallel_items_sharing_a_checkout_get_one_warning(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    loop = batch_loop(tmp_path, repo, ["a", "b", "c"], parallel=2, isolation="none")
    result = ralph("run", str(loop), "-q")
    assert result.stderr.count("share") + result.stderr.count("same git checkout") == 1, result.stderr
    assert "batch.isolation: worktree" in result.stderr


def test_workdir_with_item_runs_each_item_in_its_folder_and_fails_only_a_missing_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"services/api/main.py": "x\n", "services/db/main.py": "y\n"})
    loop = batch_loop(tmp_path, repo, ["api", "gone", "db"], isolation="none", workdir=f"{repo}/services/{{item}}")
    result = ralph("run", str(loop))
    assert result.returncode == 1
    seen = {p.stem: json.loads(p.read_text())["cwd"] for p in (tmp_path / "out").glob("*.json")}
    assert seen == {"api-1": str(repo / "services" / "api"), "db-1": str(repo / "services" / "db")}
    assert (repo / "services/api/api.txt").exists()
    assert "item gone: failed" in result.stdout and "services/gone does not exist" in result.stdout
    api = next(s for s in sessions() if s["item"] == "api")
    assert api["changed_files"] == ["services/api/api.txt"]


def test_workdir_with_item_in_worktrees(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"services/api/main.py": "x\n"})
    loop = batch_loop(tmp_path, repo, ["api", "nope"], workdir=f"{repo}/services/{{item}}")
    result = ralph("run", str(loop))
    assert "does not exist on branch ralph/iso/nope" in result.stdout, result.stdout
    cwd = json.loads((tmp_path / "out" / "api-1.json").read_text())["cwd"]
    assert cwd.endswith("/services/api") and not cwd.startswith(str(repo))
    assert git(repo, "show", "ralph/iso/api:services/api/api.txt") == "iteration 1 of api\n"
    assert worktrees(repo) == [str(repo)] and git(repo, "status", "--porcelain") == ""


def test_workdir_item_without_a_batch_is_an_error(tmp_path: Path) -> None:
    loop = write_loop(tmp_path, """
        name: x
        workdir: services/{item}
        agent: {command: "true"}
    """)
    result = ralph("validate", str(loop))
    assert result.returncode == 2 and "loop.yaml:2:" in result.stderr and "needs a batch" in result.stderr


def kill_9_while_item_k_runs(tmp_path: Path, repo: Path) -> None:
    """A batch of item k, killed with SIGKILL while its agent runs in its worktree."""
    hang = tmp_path / "hanging"
    loop = batch_loop(tmp_path, repo, ["k"], extra_env={"HANG": str(hang)})
    proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop), "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(hang)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_after_kill_9_the_next_run_keeps_the_work_and_cleans_up(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    kill_9_while_item_k_runs(tmp_path, repo)
    # The agent, in its own process group, outlives the kill; the next ralph ends it (the abandoned-run repair).
    assert len(worktrees(repo)) == 2  # the killed run's worktree is still there
    loop2 = batch_loop(tmp_path, repo, ["k"])  # the same loop, without the hang
    result = ralph("run", str(loop2), "-q")
    assert result.returncode == 0, result.stderr
    assert worktrees(repo) == [str(repo)] and git(repo, "status", "--porcelain") == ""
    assert not (repo / ".git" / "index.lock").exists()
    log = git(repo, "log", "--format=%s", "ralph/iso/k").splitlines()
    assert log[-1] == "initial" and "ralph: left uncommitted by an interrupted run" in log
    assert git(repo, "show", "ralph/iso/k:k.txt") == "iteration 1 of k\niteration 1 of k\n"


def test_interrupting_an_isolated_batch_commits_and_removes_the_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    hang = tmp_path / "hanging"
    loop = batch_loop(tmp_path, repo, ["x"], extra_env={"HANG": str(hang)})
    proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(hang)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert worktrees(repo) == [str(repo)] and git(repo, "status", "--porcelain") == ""
    assert git(repo, "show", "ralph/iso/x:x.txt") == "iteration 1 of x\n"


def test_a_later_run_of_any_loop_cleans_the_worktrees_a_killed_run_left(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    kill_9_while_item_k_runs(tmp_path, repo)
    other = tmp_path / "other"
    other.mkdir()
    plain = write_loop(other, f"""
        name: plain
        workdir: {repo}
        agent: {{command: "true"}}
        until: {{max_iterations: 1}}
    """)
    result = ralph("run", str(plain), "-q")
    assert result.returncode == 0, result.stderr
    assert worktrees(repo) == [str(repo)] and git(repo, "status", "--porcelain") == ""
    assert git(repo, "show", "ralph/iso/k:k.txt") == "iteration 1 of k\n"


def test_a_monorepo_items_change_is_what_it_did_in_its_own_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"services/api/main.py": "x\n"})
    loop = batch_loop(tmp_path, repo, ["api"], isolation="none", workdir=f"{repo}/services/{{item}}",
                      extra_env={"OUTSIDE": "1"})
    assert ralph("run", str(loop), "-q").returncode == 0
    (api,) = sessions()
    assert api["changed_files"] == ["services/api/api.txt"] and api["git_scope"] == "services/api"
    patch = ralph("diff", str(api["id"]))
    assert "services/api/api.txt" in patch.stdout and "outside-api" not in patch.stdout
    assert "outside-api.txt" in ralph("diff", str(api["id"]), "--", ".", cwd=repo).stdout
    (repo / "services/api/api.txt").write_text("edited after\n")
    (repo / "top.txt").write_text("the user's, elsewhere\n")
    restored = ralph("restore", str(api["id"]), "--before", cwd=repo)
    assert restored.returncode == 0 and "in services/api/" in restored.stdout, restored.stderr
    assert not (repo / "services/api/api.txt").exists()
    assert (repo / "top.txt").exists() and (repo / "services/outside-api.txt").exists()


def test_parallel_items_in_one_checkout_snapshot_side_by_side(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    loop = batch_loop(tmp_path, repo, ["p", "q", "r"], parallel=3, isolation="none",
                      extra_env={"BARRIER": str(tmp_path / "barrier"), "BARRIER_SIZE": "3"})
    result = ralph("run", str(loop), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning") == 1 and "same git checkout" in result.stderr
    rows = sessions()
    assert len(rows) == 3 and all(r["git_before"] and r["git_after"] for r in rows)
    assert all(f"{r['item']}.txt" in r["changed_files"] for r in rows)
    assert not (repo / ".git" / "index.lock").exists() and head(repo) == git(repo, "rev-parse", "main").strip()
