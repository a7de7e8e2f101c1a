"""The real opencode CLI against a scripted OpenAI-compatible server, without ralph.

Proves what the ralph opencode preset relies on (see docs/opencode-notes.md): a session
imported with our ID and title is used by ``opencode run --session``, the env we give
opencode reaches its bash tool, and the JSON events carry the session ID, tokens and cost.

Needs npm (opencode-ai is installed once into $RALPH_TEST_CACHE or ~/.cache/ralph-tests).
With CI set, failing to install opencode fails these tests; without CI they are skipped only
when npm is absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.opencode import (
    OpencodeUnavailable,
    ensure_opencode,
    import_session,
    opencode_env,
    parse_events,
    project_id,
    run_opencode,
)
from tests.support.preset_runs import installed
from tests.support.scripted_llm import ScriptedLLM, bash, text

pytestmark = pytest.mark.opencode

MODEL = "scripted/scripted-model"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ENV_COMMAND = "env | grep -E '^(OPENCODE_SESSION|RALPH_|TRACEPARENT)' | sort"
# opencode_env's default model cost: USD 3 / 15 per million input / output tokens, and the
# scripted server reports 100 prompt + 20 completion tokens per reply.
STEP_COST = (100 * 3.0 + 20 * 15.0) / 1_000_000


def new_session_id() -> str:
    alnum = string.digits + string.ascii_letters
    return "ses_" + secrets.token_hex(6) + "".join(secrets.choice(alnum) for _ in range(14))


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    return installed(ensure_opencode, "opencode", OpencodeUnavailable)


@pytest.fixture
def ran_session(opencode_bin, tmp_path):
    """Import a session with our ID/title, then one `opencode run` in it (2 scripted turns)."""
    tmp = tmp_path
    workdir = tmp / "work"
    workdir.mkdir()
    sid = new_session_id()
    title = "Fix failing tests #1 (ralph test)"
    turns = [
        bash(ENV_COMMAND, "Print the session environment"),
        text("All tests pass now. <promise>COMPLETE</promise>"),
    ]
    with ScriptedLLM(turns) as srv:
        env = opencode_env(tmp, srv.base_url, MODEL)
        imported = import_session(opencode_bin, env, workdir, sid, title)
        child_env = {
            **env,
            "OPENCODE_SESSION_ID": sid,
            "OPENCODE_SESSION_TITLE": title,
            "RALPH_SESSION_ID": sid,
            "RALPH_ITERATION": "1",
            "TRACEPARENT": TRACEPARENT,
        }
        proc = run_opencode(
            opencode_bin,
            child_env,
            workdir,
            ["run", "--format", "json", "--session", sid, "--model", MODEL, "Fix the next failing test"],
        )
    return {
        "sid": sid,
        "title": title,
        "workdir": workdir,
        "env": env,
        "proc": proc,
        "events": parse_events(proc.stdout),
        "srv": srv,
        "imported": imported,
    }


def test_run_in_imported_session_reports_events_env_tokens_and_cost(ran_session):
    r = ran_session
    proc, events, sid, title = r["proc"], r["events"], r["sid"], r["title"]
    assert proc.returncode == 0, proc.stderr
    assert events, proc.stdout

    # every event carries our session ID
    assert {e["sessionID"] for e in events} == {sid}
    assert [e["type"] for e in events] == [
        "step_start",
        "tool_use",
        "step_finish",
        "step_start",
        "text",
        "step_finish",
    ]
    for e in events:
        assert e["part"]["sessionID"] == sid
        assert isinstance(e["timestamp"], int)

    # the bash tool ran with the env we gave the opencode process
    tool = next(e for e in events if e["type"] == "tool_use")["part"]
    assert tool["tool"] == "bash"
    assert tool["state"]["status"] == "completed"
    assert tool["state"]["input"]["command"] == ENV_COMMAND
    assert tool["state"]["metadata"]["exit"] == 0
    output = tool["state"]["output"]
    assert f"OPENCODE_SESSION_ID={sid}\n" in output
    assert f"OPENCODE_SESSION_TITLE={title}\n" in output
    assert f"RALPH_SESSION_ID={sid}\n" in output
    assert "RALPH_ITERATION=1\n" in output
    assert f"TRACEPARENT={TRACEPARENT}\n" in output

    # the final text
    texts = [e["part"]["text"] for e in events if e["type"] == "text"]
    assert texts == ["All tests pass now. <promise>COMPLETE</promise>"]

    # tokens and cost per step
    finishes = [e["part"] for e in events if e["type"] == "step_finish"]
    assert [f["reason"] for f in finishes] == ["tool-calls", "stop"]
    for f in finishes:
        assert f["type"] == "step-finish"
        assert f["tokens"]["input"] == 100
        assert f["tokens"]["output"] == 20
        assert f["tokens"]["total"] == 120
        assert f["cost"] == pytest.approx(STEP_COST)
    assert sum(f["cost"] for f in finishes) == pytest.approx(2 * STEP_COST)

    # what the scripted server saw
    srv = r["srv"]
    # the session already had a title, so opencode made no title-generation call
    assert srv.aux_requests == []
    assert len(srv.scripted_requests) == 2
    first, second = srv.scripted_requests
    assert first["model"] == "scripted-model"
    assert first["stream"] is True
    assert "bash" in [t["function"]["name"] for t in first["tools"]]
    user = [m for m in first["messages"] if m["role"] == "user"]
    # a positional message containing spaces reaches the model wrapped in double quotes
    assert user[-1]["content"] == '"Fix the next failing test"'
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert len(tool_msgs) == 1
    assert f"OPENCODE_SESSION_ID={r['sid']}" in tool_msgs[0]["content"]
    assert f"OPENCODE_SESSION_TITLE={r['title']}" in tool_msgs[0]["content"]


def test_session_list_and_export_show_our_id_and_title(ran_session, opencode_bin):
    r = ran_session
    sid, title, workdir, env = r["sid"], r["title"], r["workdir"], r["env"]

    listed = run_opencode(opencode_bin, env, workdir, ["session", "list", "--format", "json"])
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    ours = [s for s in sessions if s["id"] == sid]
    assert len(ours) == 1, sessions
    assert ours[0]["title"] == title  # opencode did not retitle it
    assert ours[0]["projectId"] == "global" == project_id(workdir)
    assert ours[0]["directory"] == str(workdir)

    table = run_opencode(opencode_bin, env, workdir, ["session", "list"])
    assert table.returncode == 0
    assert sid in table.stdout and title in table.stdout

    exported = run_opencode(opencode_bin, env, workdir, ["export", sid])
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    assert doc["info"]["id"] == sid
    assert doc["info"]["title"] == title
    assert doc["info"]["projectID"] == "global"
    assert doc["info"]["directory"] == str(workdir)
    roles = [m["info"]["role"] for m in doc["messages"]]
    assert roles[0] == "user" and "assistant" in roles
    parts = [p for m in doc["messages"] for p in m["parts"]]
    tool_parts = [p for p in parts if p["type"] == "tool"]
    assert f"OPENCODE_SESSION_ID={sid}" in tool_parts[0]["state"]["output"]
    assert any(p["type"] == "text" and "<promise>COMPLETE</promise>" in p.get("text", "") for p in parts)
    costs = [m["info"].get("cost", 0) for m in doc["messages"] if m["info"]["role"] == "assistant"]
    assert sum(costs) == pytest.approx(2 * STEP_COST)


def test_missing_session_fails_and_title_fallback_reports_new_id(opencode_bin, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    missing = new_session_id()
    with ScriptedLLM([text("hello from a fresh session")]) as srv:
        env = opencode_env(tmp_path, srv.base_url, MODEL)
        proc = run_opencode(
            opencode_bin, env, workdir, ["run", "--format", "json", "--session", missing, "--model", MODEL, "hi"]
        )
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert "Session not found" in proc.stderr
        assert srv.requests == []

        # fallback: let opencode create the session with our title, read its ID from events
        title = "Fallback title #2"
        proc = run_opencode(
            opencode_bin, env, workdir, ["run", "--format", "json", "--title", title, "--model", MODEL, "hi"]
        )
        assert proc.returncode == 0, proc.stderr
        events = parse_events(proc.stdout)
        new_ids = {e["sessionID"] for e in events}
        assert len(new_ids) == 1
        new_id = new_ids.pop()
        assert new_id.startswith("ses_") and new_id != missing
        assert srv.aux_requests == []  # --title: no title generation either
    listed = json.loads(run_opencode(opencode_bin, env, workdir, ["session", "list", "--format", "json"]).stdout)
    assert [(s["id"], s["title"]) for s in listed] == [(new_id, title)]


def test_prompt_on_stdin_arrives_verbatim(opencode_bin, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    prompt = 'Fix the "next" failing test\nsecond line {item}\n'
    with ScriptedLLM([text("ok")]) as srv:
        env = opencode_env(tmp_path, srv.base_url, MODEL)
        proc = run_opencode(
            opencode_bin, env, workdir, ["run", "--format", "json", "--title", "t", "--model", MODEL], input=prompt
        )
        assert proc.returncode == 0, proc.stderr
    user = [m for m in srv.scripted_requests[0]["messages"] if m["role"] == "user"]
    assert user[-1]["content"] == prompt


def test_import_into_git_repo_uses_root_commit_as_project_id(opencode_bin, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    sub = repo / "pkg"
    sub.mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "root"], cwd=repo, check=True)
    root = subprocess.run(
        ["git", "rev-list", "--max-parents=0", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert project_id(sub) == root

    sid = new_session_id()
    env = opencode_env(tmp_path, "http://127.0.0.1:9/v1", MODEL)  # no LLM call here
    import_session(opencode_bin, env, sub, sid, "In a git repo")
    listed = json.loads(run_opencode(opencode_bin, env, sub, ["session", "list", "--format", "json"]).stdout)
    assert [(s["id"], s["title"], s["projectId"], s["directory"]) for s in listed] == [
        (sid, "In a git repo", root, str(sub))
    ]
    # opencode caches the project ID inside the repo's .git folder
    assert (repo / ".git" / "opencode").read_text().strip() == root
    # another project (a non-git dir) does not list it
    other = tmp_path / "elsewhere"
    other.mkdir()
    listed = json.loads(run_opencode(opencode_bin, env, other, ["session", "list", "--format", "json"]).stdout or "[]")
    assert sid not in [s["id"] for s in listed]


def test_opencode_takes_its_directory_from_PWD(opencode_bin, tmp_path):
    """A stale $PWD wins over the real cwd: the preset must set PWD (or pass --dir)."""
    real = tmp_path / "real"
    stale = tmp_path / "stale"
    real.mkdir()
    stale.mkdir()
    with ScriptedLLM([bash("pwd", "Where am I"), text("done")]) as srv:
        env = opencode_env(tmp_path, srv.base_url, MODEL)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE_")}
        full_env.update(env)
        full_env["PWD"] = str(stale)
        proc = subprocess.run(
            [str(opencode_bin), "run", "--format", "json", "--title", "t", "--model", MODEL, "hi"],
            cwd=real,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    tool = next(e for e in parse_events(proc.stdout) if e["type"] == "tool_use")["part"]
    assert tool["state"]["output"].strip() == str(stale)


def test_title_generation_is_answered_without_consuming_a_turn(opencode_bin, tmp_path):
    """Without --session/--title opencode asks the small model for a title, concurrently with
    the first turn; the server answers it aside so the script keeps its order."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    turns = [bash("echo first", "First"), text("second <promise>COMPLETE</promise>")]
    with ScriptedLLM(turns, aux_text="Generated title") as srv:
        env = opencode_env(tmp_path, srv.base_url, MODEL)
        proc = run_opencode(opencode_bin, env, workdir, ["run", "--format", "json", "--model", MODEL, "hi"])
    assert proc.returncode == 0, proc.stderr
    events = parse_events(proc.stdout)
    assert [e["type"] for e in events] == ["step_start", "tool_use", "step_finish", "step_start", "text", "step_finish"]
    assert events[1]["part"]["state"]["output"] == "first\n"
    assert events[4]["part"]["text"] == "second <promise>COMPLETE</promise>"
    assert len(srv.aux_requests) == 1
    assert srv.aux_requests[0].get("tools") in (None, [])
    assert srv.turns_used == 2 and len(srv.scripted_requests) == 2
    listed = json.loads(run_opencode(opencode_bin, env, workdir, ["session", "list", "--format", "json"]).stdout)
    assert [s["title"] for s in listed] == ["Generated title"]


def _wait_for(predicate, timeout: float = 60.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_run_from_another_directory_hangs_unless_dir_is_given(opencode_bin, tmp_path):
    """`run --session` only sees events of the directory it runs in: run from anywhere but the
    session's directory it does the work, prints nothing and never exits. --dir fixes it."""
    workdir = tmp_path / "work"
    other = tmp_path / "other"
    workdir.mkdir()
    other.mkdir()
    sid = new_session_id()
    with ScriptedLLM([bash("pwd", "Where am I"), text("done")] * 2) as srv:
        env = opencode_env(tmp_path, srv.base_url, MODEL)
        import_session(opencode_bin, env, workdir, sid, "Dir test")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE_")}
        full_env.update(env)
        full_env["PWD"] = str(other)
        out = tmp_path / "stdout.txt"
        with open(out, "w") as fh:
            proc = subprocess.Popen(
                [str(opencode_bin), "run", "--format", "json", "--session", sid, "--model", MODEL, "hi"],
                cwd=other,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                assert _wait_for(lambda: len(srv.scripted_requests) >= 2)  # the session did its work
                time.sleep(5)
                assert proc.poll() is None  # ...but the CLI is still waiting
                assert out.read_text() == ""  # ...and printed no event
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

        # the same from `other`, with --dir naming the session's directory: fine
        proc2 = run_opencode(
            opencode_bin,
            env,
            other,
            ["run", "--format", "json", "--dir", str(workdir), "--session", sid, "--model", MODEL, "hi"],
        )
    assert proc2.returncode == 0, proc2.stderr
    events = parse_events(proc2.stdout)
    assert {e["sessionID"] for e in events} == {sid}
    tool = next(e for e in events if e["type"] == "tool_use")["part"]
    assert tool["state"]["output"].strip() == str(workdir)


def _pids_running(needle: str) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if needle.encode() in fh.read().replace(b"\0", b" "):
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_sigterm_ends_opencode_but_its_bash_tool_survives(opencode_bin, tmp_path):
    """opencode runs bash tools in a session of their own (setsid): signalling opencode's
    process group ends opencode (the config dir is seeded, so no background npm install is
    catching signals) but not the tool's processes."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    sleeper = f"sleep 90.{secrets.randbelow(10**6):06d}"
    with ScriptedLLM([bash(sleeper, "Sleep"), text("done")]) as srv:
        env = opencode_env(tmp_path, srv.base_url, MODEL)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE_")}
        full_env.update(env)
        full_env["PWD"] = str(workdir)
        proc = subprocess.Popen(
            [str(opencode_bin), "run", "--format", "json", "--title", "t", "--model", MODEL, "hi"],
            cwd=workdir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        tool_pids: list[int] = []
        try:
            assert _wait_for(lambda: bool(_pids_running(sleeper)))
            tool_pids = _pids_running(sleeper)
            assert all(os.getsid(p) != os.getsid(proc.pid) for p in tool_pids)  # own session
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=15) == -signal.SIGTERM
            time.sleep(0.5)
            assert _pids_running(sleeper)  # the tool outlived its agent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for pid in tool_pids:
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
