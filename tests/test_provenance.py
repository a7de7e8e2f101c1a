"""Git provenance through the real CLI on real repositories: snapshots before and after every
iteration, the per-session change in the history, `ralph diff`, `sessions --commit`, `restore`,
`until.no_progress`, and that the user's HEAD, index, stash, config and files are left alone."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from gitrepo import git, head, make_repo, no_identity_env, refs
from handshake import spans, wait_for

from helpers import PY, ralph, write_loop, yaml_list

# The stand-in agent: does what $PLAN says for its iteration (JSON: iteration -> list of actions).
AGENT = r"""
import json, os, pathlib, subprocess, sys, time
e = os.environ
plan = json.loads(e.get("PLAN", "{}")).get(e["RALPH_ITERATION"], [])
for action, *args in plan:
    if action == "append":
        with open(args[0], "a") as fh: fh.write(args[1])
    elif action == "write":
        pathlib.Path(args[0]).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args[0]).write_text(args[1])
    elif action == "delete":
        os.unlink(args[0])
    elif action == "commit":
        ident = ["-c", "user.name=Agent", "-c", "user.email=agent@example.com"]
        subprocess.run(["git", *ident, "add", "-A"], check=True)
        subprocess.run(["git", *ident, "commit", "-q", "-m", args[0]], check=True)
    elif action == "wait":
        pathlib.Path(args[0]).touch()
        while not pathlib.Path(args[1]).exists():
            time.sleep(0.01)
    elif action == "done":
        print("<promise>COMPLETE</promise>")
"""


def loop_file(folder: Path, repo: Path, plan: dict[str, list[list[str]]], extra: str = "", until: str = "") -> Path:
    script = folder / "agent.py"
    script.write_text(AGENT)
    return write_loop(folder, f"""
        name: prov
        workdir: {repo}
        env: {{PLAN: {json.dumps(json.dumps(plan))}}}
        agent:
          command: {yaml_list([PY, str(script)])}
        until:
          max_iterations: {max(int(k) for k in plan) if plan else 1}
          output_contains: "<promise>COMPLETE</promise>"
          {until}
        {extra}
    """)


def sessions(state: Path | None = None, *args: str) -> list[dict[str, object]]:
    extra = ["--state-dir", str(state)] if state else []
    result = ralph("sessions", "--json", *extra, *args)
    assert result.returncode == 0, result.stderr
    return sorted(json.loads(result.stdout), key=lambda r: r["iteration"])


def test_each_session_records_what_it_changed_without_touching_the_users_state(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "one\ntwo\n", "b.txt": "bee\n"})
    (repo / ".gitignore").write_text("ignored.log\n")
    git(repo, "add", ".gitignore")
    (repo / "staged.txt").write_text("staged by the user\n")
    git(repo, "add", "staged.txt")  # the user's index differs from HEAD: it must stay so
    (repo / "ignored.log").write_text("noise\n")
    head_before = head(repo)
    index_before = (repo / ".git" / "index").read_bytes()
    config_before = (repo / ".git" / "config").read_bytes()
    plan = {"1": [["append", "a.txt", "three\nfour\n"], ["write", "new.txt", "x\ny\nz\n"]],
            "2": [["delete", "b.txt"]]}
    loop = loop_file(tmp_path, repo, plan)
    # No git identity anywhere: ralph's snapshots still commit (its own identity, passed to commit-tree).
    result = ralph("run", str(loop), "-q", env=no_identity_env(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr  # exhausted without the promise
    assert "warning" not in result.stderr, result.stderr
    first, second = sessions()
    assert (first["files_changed"], first["insertions"], first["deletions"]) == (2, 5, 0)
    assert sorted(first["changed_files"]) == ["a.txt", "new.txt"]
    assert (second["files_changed"], second["insertions"], second["deletions"]) == (1, 0, 1)
    assert first["commits"] == [] and second["commits"] == []
    tree = "{}^{{tree}}"
    assert git(repo, "rev-parse", tree.format(second["git_before"])) == git(repo, "rev-parse",
                                                                            tree.format(first["git_after"]))
    # The user's HEAD, index, config and stash are as they were; only the agent's edits are in the files.
    assert head(repo) == head_before
    assert (repo / ".git" / "index").read_bytes() == index_before
    assert (repo / ".git" / "config").read_bytes() == config_before
    assert git(repo, "stash", "list") == ""
    assert not (repo / ".git" / "index.lock").exists()
    assert git(repo, "diff", "--cached", "--name-only").split() == [".gitignore", "staged.txt"]
    # The snapshots: commits under refs/ralph/ with the trailers, ignored files left out.
    assert len(refs(repo)) == 4
    message = git(repo, "cat-file", "commit", str(first["git_after"]))
    for trailer in (f"Ralph-Session: {first['id']}", f"Ralph-Run: {first['run_id']}", "Ralph-Iteration: 1",
                    "Ralph-Loop: prov", f"Trace-Id: {first['trace_id']}"):
        assert trailer in message
    tree = git(repo, "ls-tree", "-r", "--name-only", str(first["git_after"])).split()
    assert set(tree) == {".gitignore", "a.txt", "b.txt", "new.txt", "staged.txt"}


def test_commits_made_during_an_iteration_count_and_lead_back_to_their_session(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = {"1": [["write", "c.txt", "c\n"], ["commit", "agent commit"]], "2": [["append", "a.txt", "more\n"]]}
    loop = loop_file(tmp_path, repo, plan)
    result = ralph("run", str(loop), "-q")
    assert result.returncode == 1, result.stderr
    first, second = sessions()
    agent_commit = head(repo)
    assert first["commits"] == [agent_commit]
    assert (first["files_changed"], first["insertions"]) == (1, 1)
    assert first["git_head"] == agent_commit
    assert second["commits"] == []
    found = ralph("sessions", "--commit", agent_commit[:8], "--json", cwd=repo)
    assert found.returncode == 0, found.stderr
    assert [r["id"] for r in json.loads(found.stdout)] == [first["id"]]
    table = ralph("sessions", "--commit", agent_commit)
    assert first["id"] in table.stdout and "+1 -0 1f 1c" in table.stdout
    missing = ralph("sessions", "--commit", "deadbeef")
    assert missing.returncode == 1 and "no session made commit deadbeef" in missing.stderr
    listing = ralph("sessions")
    assert "+1 -0 1f" in listing.stdout, listing.stdout
    shown = ralph("show", str(first["id"]))
    assert "git: 1 file(s) changed, +1 -0, 1 commit(s)" in shown.stdout and "c.txt" in shown.stdout


def test_the_iteration_span_carries_the_change(tmp_path: Path, isolated: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    loop = loop_file(tmp_path, repo, {"1": [["append", "a.txt", "x\ny\n"], ["done"]]})
    assert ralph("run", str(loop), "-q").returncode == 0
    (iteration,) = [s for s in spans(isolated) if s["name"] == "ralph.iteration"]
    attrs = iteration["attrs"]
    assert (int(attrs["ralph.git.files_changed"]), int(attrs["ralph.git.insertions"]),
            int(attrs["ralph.git.deletions"])) == (1, 2, 0)
    assert attrs["vcs.ref.head.revision"] == head(repo)


def test_ralph_diff_prints_the_sessions_change(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "one\n", "docs/b.md": "bee\n"})
    plan = {"1": [["append", "a.txt", "added line\n"], ["append", "docs/b.md", "more bee\n"], ["done"]]}
    loop = loop_file(tmp_path, repo, plan)
    assert ralph("run", str(loop), "-q").returncode == 0
    (session,) = sessions()
    patch = ralph("diff", str(session["id"])[:12])
    assert patch.returncode == 0, patch.stderr
    assert "+added line" in patch.stdout and "+more bee" in patch.stdout and "diff --git a/a.txt b/a.txt" in patch.stdout
    stat = ralph("diff", str(session["id"]), "--stat")
    assert re.search(r"a\.txt +\| 1 \+", stat.stdout) and "2 files changed" in stat.stdout, stat.stdout
    only = ralph("diff", str(session["id"]), "--", "docs")
    assert "+more bee" in only.stdout and "a.txt" not in only.stdout
    # From inside the repository, paths are relative to where the user stands, as in git.
    inside = ralph("diff", str(session["id"]), "--", "b.md", cwd=repo / "docs",
                   env={"RALPH_STATE_DIR": str(tmp_path / "state")})
    assert "+more bee" in inside.stdout and "a.txt" not in inside.stdout


def test_outside_git_snapshots_are_silently_off_and_diff_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    loop = loop_file(tmp_path, folder, {"1": [["write", "x.txt", "x\n"], ["done"]]})
    result = ralph("run", str(loop), "-q")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    (session,) = sessions()
    assert session["git_before"] is None and session["files_changed"] is None
    diff = ralph("diff", str(session["id"]))
    assert diff.returncode == 1
    assert diff.stderr.strip().count("\n") == 0 and "no git snapshots" in diff.stderr
    restore = ralph("restore", str(session["id"]))
    assert restore.returncode == 1 and "no git snapshots" in restore.stderr


def test_snapshots_false_turns_provenance_off(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    loop = loop_file(tmp_path, repo, {"1": [["append", "a.txt", "x\n"], ["done"]]}, extra="git: {snapshots: false}")
    assert ralph("run", str(loop), "-q").returncode == 0
    assert refs(repo) == []
    assert sessions()[0]["git_after"] is None


def test_a_state_folder_inside_the_repository_stays_out_of_the_snapshots(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")  # .ralph is not ignored here
    loop = loop_file(tmp_path, repo, {"1": [["append", "a.txt", "x\n"], ["done"]]})
    state = repo / ".ralph"
    result = ralph("run", str(loop), "-q", "--state-dir", str(state), cwd=repo)
    assert result.returncode == 0, result.stderr
    (session,) = sessions(state)
    assert session["changed_files"] == ["a.txt"]
    for sha in (session["git_before"], session["git_after"]):
        assert not any(p.startswith(".ralph") for p in git(repo, "ls-tree", "-r", "--name-only", str(sha)).split())
    assert not list((state / "tmp").glob("ralph-index-*"))  # no temporary index left behind


def test_an_ignored_state_folder_inside_the_repository_is_left_out_too(tmp_path: Path) -> None:
    # The usual case: ./.ralph in the repository, and .ralph/ in its .gitignore (git add fails on an
    # exclude naming an ignored path, so the snapshot must not name it).
    repo = make_repo(tmp_path / "repo")
    (repo / ".gitignore").write_text(".ralph/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore the state folder")
    loop = loop_file(tmp_path, repo, {"1": [["append", "a.txt", "x\n"], ["done"]]})
    state = repo / ".ralph"
    result = ralph("run", str(loop), "-q", "--state-dir", str(state), cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    (session,) = sessions(state)
    assert session["changed_files"] == ["a.txt"] and session["git_after"]
    assert not any(p.startswith(".ralph") for p in git(repo, "ls-tree", "-r", "--name-only",
                                                           str(session["git_after"])).split())


def test_git_missing_warns_once_and_the_loop_runs_on(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    loop = loop_file(tmp_path, repo, {"1": [["write", "x.txt", "x\n"]], "2": [["done"]]})
    empty = tmp_path / "bin"
    empty.mkdir()
    result = ralph("run", str(loop), "-q", env={"PATH": str(empty)})
    # git is not on PATH at all, in a repository: one warning, and the loop runs without snapshots.
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("git snapshots are off for this run: git is not installed") == 1, result.stderr
    assert all(s["git_after"] is None for s in sessions())


def test_a_broken_snapshot_warns_once_and_never_fails_the_loop(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".git" / "refs" / "ralph").write_text("not a folder\n")  # no ref under refs/ralph/ can be made
    plan = {"1": [["write", "x.txt", "x\n"]], "2": [["write", "y.txt", "y\n"]], "3": [["done"]]}
    loop = loop_file(tmp_path, repo, plan)
    result = ralph("run", str(loop), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("git snapshots are off for this run") == 1, result.stderr
    assert len(sessions()) == 3
    assert not (repo / ".git" / "index.lock").exists()


def test_restore_sets_the_tree_to_a_session_and_prints_its_undo(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "one\n", "keep.txt": "keep\n"})
    plan = {"1": [["append", "a.txt", "first\n"], ["write", "made/by/one.txt", "1\n"]],
            "2": [["append", "a.txt", "second\n"], ["delete", "keep.txt"]]}
    loop = loop_file(tmp_path, repo, plan)
    ralph("run", str(loop), "-q")
    first, _second = sessions()
    head_before, index_before = head(repo), (repo / ".git" / "index").read_bytes()
    (repo / "scratch.txt").write_text("the user's own, after the run\n")

    result = ralph("restore", str(first["id"]), "--before", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert (repo / "a.txt").read_text() == "one\n" and (repo / "keep.txt").read_text() == "keep\n"
    assert not (repo / "made").exists() and not (repo / "scratch.txt").exists()
    assert head(repo) == head_before and (repo / ".git" / "index").read_bytes() == index_before
    undo = [line for line in result.stdout.splitlines() if line.startswith("to undo: ")]
    assert len(undo) == 1
    argv = undo[0].removeprefix("to undo: ").split()
    assert argv[:2] == ["ralph", "restore"]
    back = ralph(*argv[1:], cwd=repo)
    assert back.returncode == 0, back.stderr
    assert (repo / "scratch.txt").read_text() == "the user's own, after the run\n"
    assert (repo / "a.txt").read_text() == "one\nfirst\nsecond\n" and not (repo / "keep.txt").exists()

    after_first = ralph("restore", str(first["id"]), cwd=repo)
    assert after_first.returncode == 0
    assert (repo / "a.txt").read_text() == "one\nfirst\n" and (repo / "made/by/one.txt").read_text() == "1\n"


def test_restore_refuses_while_a_loop_runs_in_the_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    started, go = tmp_path / "started", tmp_path / "go"
    loop = loop_file(tmp_path, repo, {"1": [["append", "a.txt", "x\n"]],
                                      "2": [["wait", str(started), str(go)], ["done"]]})
    ralph("run", str(loop), "-q", "--max-iterations", "1")
    (done,) = sessions()
    proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop), "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(started)
        refused = ralph("restore", str(done["id"]), cwd=repo)
        assert refused.returncode == 1
        assert "a loop is running in this folder" in refused.stderr
        assert (repo / "a.txt").read_text() == "one\ntwo\nx\nx\n"
        (running,) = [s for s in sessions() if s["status"] == "running"]
        early = ralph("diff", str(running["id"]))
        assert early.returncode == 1 and "may still be running" in early.stderr
    finally:
        go.touch()
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_restore_outside_a_repository_or_without_a_history_is_one_line(tmp_path: Path) -> None:
    result = ralph("restore", "ses_nothing")
    assert result.returncode in (1, 2) and result.stderr.strip().count("\n") == 0


def test_no_progress_stops_after_n_unchanged_iterations(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = {"1": [["append", "a.txt", "x\n"]], "2": [], "3": [["write", "a.txt", "one\ntwo\nx\n"]], "4": [],
            "5": [], "6": [["done"]]}
    loop = loop_file(tmp_path, repo, plan, until="no_progress: 3")
    result = ralph("run", str(loop))
    assert result.returncode == 1, result.stdout + result.stderr
    rows = sessions()
    assert len(rows) == 4  # 2 nothing, 3 wrote the same content again, 4 nothing: three in a row
    assert "iteration 1 ok · +1 -0 1f" in result.stdout and "iteration 2 ok · +0 -0 0f" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert f"no progress in 3 iterations: nothing changed since {rows[0]['id']}" in last, last


def test_a_commit_is_progress(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = {"1": [["commit", "empty"]], "2": [], "3": [["done"]]}
    (repo / "pending.txt").write_text("p\n")  # committed by iteration 1: a commit, and no change to the files
    loop = loop_file(tmp_path, repo, plan, until="no_progress: 2")
    result = ralph("run", str(loop), "-q")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_progress_outside_git_is_an_error_at_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    loop = loop_file(tmp_path, folder, {"1": [["done"]]}, until="no_progress: 2")
    result = ralph("validate", str(loop))
    assert result.returncode == 2
    line = next(i for i, text in enumerate(loop.read_text().splitlines(), 1) if text.strip().startswith("no_progress:"))
    assert f"{loop}:{line}:" in result.stderr and "until.no_progress" in result.stderr
    assert "not in" in result.stderr
    repo = make_repo(tmp_path / "repo")
    off = loop_file(tmp_path, repo, {"1": [["done"]]}, until="no_progress: 2", extra="git: {snapshots: false}")
    result = ralph("validate", str(off))
    assert result.returncode == 2 and "snapshots" in result.stderr


def test_an_old_history_gains_the_git_columns(tmp_path: Path, isolated: Path) -> None:
    import sqlite3

    from helpers import V2_TABLES

    isolated.mkdir(parents=True)
    db = sqlite3.connect(isolated / "ralph.db")
    db.executescript(V2_TABLES + "PRAGMA user_version = 2;")
    db.close()
    repo = make_repo(tmp_path / "repo")
    loop = loop_file(tmp_path, repo, {"1": [["append", "a.txt", "x\n"], ["done"]]})
    assert ralph("run", str(loop), "-q").returncode == 0
    assert sessions()[0]["files_changed"] == 1


def test_a_timed_out_or_interrupted_iteration_still_records_its_change(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    started = tmp_path / "started"
    plan = {"1": [["write", "half.txt", "half done\n"], ["wait", str(started), str(tmp_path / "never")]]}
    script = tmp_path / "agent.py"
    loop = loop_file(tmp_path, repo, plan)
    text = loop.read_text().replace(f"  command: {yaml_list([PY, str(script)])}",
                                    f"  command: {yaml_list([PY, str(script)])}\n  timeout: 1s")
    loop.write_text(text)
    result = ralph("run", str(loop), "-q")
    assert result.returncode == 1, result.stderr
    (timed_out,) = sessions()
    assert timed_out["status"] == "timeout" and timed_out["changed_files"] == ["half.txt"]

    started.unlink()
    proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop_file(tmp_path, repo, plan)), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(started)
    proc.send_signal(2)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    interrupted = [s for s in sessions() if s["status"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["git_after"] is not None
    assert interrupted[0]["changed_files"] == []  # half.txt was already there before it
    assert not (repo / ".git" / "index.lock").exists()
    assert git(repo, "status", "--porcelain").split() == ["??", "half.txt"]


def test_the_schema_shows_the_git_keys() -> None:
    result = ralph("schema")
    schema = json.loads(result.stdout)
    assert schema["properties"]["git"]["default"] == {"snapshots": True}
    assert "no_progress" in schema["$defs"]["Until"]["properties"]
    assert schema["$defs"]["Batch"]["properties"]["isolation"]["enum"] == ["none", "worktree"]
