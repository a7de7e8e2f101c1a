"""Batches through the real CLI: item sources, real parallelism, labelled output, failures, --item,
--shard, the ralph.batch span attribute, interrupts, and the live table on a pseudo-terminal."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpers import PY, ralph, write_loop, yaml_list
from ralph.batch import batch_id, shard_items
from ralph.dashboard import ItemRow, render_table

# The stand-in agent: records what it saw (env, prompt) in $OUT/<item>-<iteration>.json, prints a few
# lines naming its item and session, and waits at an optional barrier of marker files.
AGENT = r"""
import json, os, pathlib, sys, time
e = os.environ
out = pathlib.Path(e["OUT"]); out.mkdir(parents=True, exist_ok=True)
item, sid = e["RALPH_ITEM"], e["OPENCODE_SESSION_ID"]
prompt = sys.stdin.read()
(out / f"{item}-{e['RALPH_ITERATION']}.json").write_text(json.dumps({"env": dict(e), "prompt": prompt}))
print(f"first line of {item} in {sid}", flush=True)
barrier = e.get("BARRIER")
if barrier:  # wait until every agent of the batch is running at the same time
    folder = pathlib.Path(barrier); folder.mkdir(parents=True, exist_ok=True)
    (folder / item).touch()
    deadline = time.monotonic() + 60
    while len(list(folder.iterdir())) < int(e["BARRIER_SIZE"]):
        if time.monotonic() > deadline:
            print(f"barrier timed out for {item}", flush=True); sys.exit(3)
        time.sleep(0.01)
print(f"second line of {item} in {sid}", flush=True)
if item.startswith("bad"):
    sys.exit(1)
print("<promise>COMPLETE</promise>", flush=True)
"""


def agent_loop(
    tmp_path: Path,
    batch: str,
    *,
    extra_env: str = "",
    name: str = "nightly",
    max_iterations: int = 2,
    telemetry: bool = True,
) -> Path:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    head = textwrap.dedent(f"""
        name: {name}
        title: "Nightly {{item}} #{{iteration}}"
        env: {{OUT: "{tmp_path / "out"}"{extra_env}}}
        agent:
          command: {yaml_list([PY, str(script)])}
          prompt: "Work on {{item}} in {{loop}}"
        until: {{max_iterations: {max_iterations}, output_contains: "<promise>COMPLETE</promise>"}}
        telemetry: {{enabled: {str(telemetry).lower()}}}
        batch:
    """)
    return write_loop(tmp_path, head + "".join(f"  {line}\n" for line in batch.strip().splitlines()))


def seen(tmp_path: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))}


def rows(state: Path, sql: str) -> list[dict]:
    db = sqlite3.connect(state / "ralph.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    finally:
        db.close()


def spans(state: Path) -> list[dict]:
    out = []
    for line in (state / "traces.jsonl").read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
                    out.append({"name": span["name"], "attributes": attrs})
    return out


# -- item sources ----------------------------------------------------------------------------------------
def test_items_file_comments_blank_lines_and_the_session_of_each_item(tmp_path: Path, isolated: Path) -> None:
    (tmp_path / "items.txt").write_text("# services to upkeep\n\napi\n  web  \n# worker\napi\nq'\"$(x) a\n\n")
    loop = agent_loop(tmp_path, "items_file: items.txt")
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    items = ["api", "web", "q'\"$(x) a"]  # comments and blanks skipped, duplicates once, in file order
    got = seen(tmp_path)
    assert sorted(got) == sorted(f"{i}-1" for i in items)
    for item in items:
        env, prompt = got[f"{item}-1"]["env"], got[f"{item}-1"]["prompt"]
        assert env["RALPH_ITEM"] == item
        assert env["OPENCODE_SESSION_TITLE"] == env["RALPH_SESSION_TITLE"] == f"Nightly {item} #1"
        assert prompt == f"Work on {item} in nightly"
        assert env["RALPH_ITERATION"] == "1"  # each item's loop counts its own iterations
    sessions = rows(isolated, "SELECT * FROM sessions")
    assert sorted(s["item"] for s in sessions) == sorted(items)
    assert len({s["id"] for s in sessions}) == 3
    assert not (tmp_path / "x").exists()


def test_items_command_stdout_lines_are_the_items(tmp_path: Path, isolated: Path) -> None:
    script = "import sys; print('one\\n\\n# not this\\ntwo'); print('noise', file=sys.stderr)"
    loop = agent_loop(tmp_path, f"items_command: {yaml_list([PY, '-c', script])}")
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(seen(tmp_path)) == ["one-1", "two-1"]


def test_a_failing_items_command_runs_nothing(tmp_path: Path, isolated: Path) -> None:
    loop = agent_loop(tmp_path, "items_command: 'echo partial; echo broken >&2; exit 4'")
    result = ralph("run", str(loop))
    assert result.returncode == 2
    assert "items_command exited with 4" in result.stderr and "broken" in result.stderr
    assert not (tmp_path / "out").exists()


# -- parallel ----------------------------------------------------------------------------------------------
def test_items_run_really_in_parallel_with_output_labelled_per_item(tmp_path: Path, isolated: Path) -> None:
    # Every agent waits until all four are running at once: the batch can only finish (exit 0)
    # if the four really ran in parallel. No clock is involved.
    items = ["alpha", "beta", "gamma", "delta"]
    loop = agent_loop(
        tmp_path,
        f"items: {json.dumps(items)}\nparallel: 4",
        extra_env=f', BARRIER: "{tmp_path / "barrier"}", BARRIER_SIZE: "4"',
    )
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "barrier timed out" not in result.stdout
    assert sorted(p.name for p in (tmp_path / "barrier").iterdir()) == sorted(items)
    sessions = {s["item"]: s["id"] for s in rows(isolated, "SELECT * FROM sessions")}
    lines = result.stdout.splitlines()
    for item in items:
        # each child line carries its own item's label, whatever the interleaving
        for which in ("first", "second"):
            assert f"[{item} 1 agent] {which} line of {item} in {sessions[item]}" in lines, result.stdout
        assert f"── iteration 1 [{item}] · {sessions[item]} · Nightly {item} #1" in lines
        assert f"   iteration 1 [{item}] complete" in lines
    for line in lines:
        if " line of " in line:
            label_item = line[1:].split(" ", 1)[0]
            assert f" line of {label_item} in " in line, line
    assert "ralph: complete: all 4 items succeeded (exit 0)" in result.stdout


def test_parallel_is_a_limit(tmp_path: Path, isolated: Path) -> None:
    # Each agent counts the agents running with it; none may see more than `parallel`.
    counter = tmp_path / "running"
    counter.mkdir()
    script = (
        "import os, pathlib, sys; d = pathlib.Path(sys.argv[1]); me = d / os.environ['RALPH_ITEM']; me.touch(); "
        "n = len(list(d.iterdir())); print(f'running together: {n}', flush=True); me.unlink(); "
        "print('<promise>COMPLETE</promise>')"
    )
    loop = write_loop(
        tmp_path,
        f"""
        name: limited
        agent: {{command: {yaml_list([PY, "-c", script, str(counter)])}}}
        until: {{max_iterations: 1, output_contains: "<promise>COMPLETE</promise>"}}
        batch: {{items: [a, b, c, d, e, f], parallel: 2}}
    """,
    )
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    counts = [int(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines() if "running together" in line]
    assert len(counts) == 6 and max(counts) <= 2


def test_failed_items_exit_1_with_a_summary_of_which(tmp_path: Path, isolated: Path) -> None:
    loop = agent_loop(tmp_path, "items: [good, bad-one, bad-two]\nparallel: 3")
    result = ralph("run", str(loop))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "ralph: item good: complete (success condition held) after 1 iteration(s)" in out
    assert "ralph: item bad-one: exhausted (max_iterations (2) reached) after 2 iteration(s)" in out
    last = out.splitlines()[-1]
    assert last.startswith("ralph: failed: 2 of 3 items did not succeed: ") and last.endswith("(exit 1)")
    assert "bad-one (max_iterations (2) reached)" in last and "bad-two" in last and "good" not in last
    assert rows(isolated, "SELECT status, exit_code FROM runs") == [{"status": "failed", "exit_code": 1}]

    events = [json.loads(line) for line in ralph("run", str(loop), "--json").stdout.splitlines()]
    ends = {e["item"]: e["status"] for e in events if e["event"] == "item.end"}
    assert ends == {"good": "complete", "bad-one": "exhausted", "bad-two": "exhausted"}
    assert next(e for e in events if e["event"] == "batch.start")["items"] == ["good", "bad-one", "bad-two"]


# -- --item and --shard ---------------------------------------------------------------------------------
def test_item_option_runs_just_those_items(tmp_path: Path, isolated: Path) -> None:
    loop = agent_loop(tmp_path, "items: [api, web, worker, docs]")
    result = ralph("run", str(loop), "--item", "worker", "--item", "api")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(seen(tmp_path)) == ["api-1", "worker-1"]

    # --item picks from this host's shard: an item of another shard is not run here
    other = next(
        i for i in ["api", "web", "worker", "docs"] if i not in shard_items(["api", "web", "worker", "docs"], 1, 2)
    )
    elsewhere = ralph("run", str(loop), "--shard", "1/2", "--item", other)
    assert elsewhere.returncode == 0 and "no items to run" in elsewhere.stdout
    assert sorted(seen(tmp_path)) == ["api-1", "worker-1"]

    unknown = ralph("run", str(loop), "--item", "nope")
    assert unknown.returncode == 2 and "--item 'nope' is not an item of this batch" in unknown.stderr
    plain = write_loop(tmp_path, "name: plain\nagent: {command: 'true'}\n", name="plain.yaml")
    assert ralph("run", str(plain), "--item", "x").returncode == 2
    assert ralph("run", str(plain), "--shard", "1/2").returncode == 2


@pytest.mark.parametrize("bad", ["0/3", "4/3", "1/0", "x", "1/2/3", "/2"])
def test_bad_shard_is_a_usage_error(tmp_path: Path, isolated: Path, bad: str) -> None:
    loop = agent_loop(tmp_path, "items: [a]")
    result = ralph("run", str(loop), "--shard", bad)
    assert result.returncode == 2 and "--shard" in result.stderr
    assert not (tmp_path / "out").exists()


def test_shards_are_stable_balanced_and_cover_every_item_once() -> None:
    items = [f"service-{i}" for i in range(23)] + ["api", "web", "ü", "a b"]
    for count in range(1, 8):
        parts = [shard_items(items, i, count) for i in range(1, count + 1)]
        assert sorted(x for p in parts for x in p) == sorted(items)  # each exactly once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        for part in parts:
            assert part == [i for i in items if i in part]  # the items' own order
        # the split depends on the item list alone, not on the order a host read it in
        assert [sorted(p) for p in parts] == [sorted(shard_items(items[::-1], i, count)) for i in range(1, count + 1)]
    # pinned: a release that changed the split would make mixed-version hosts disagree
    assert shard_items(["api", "web", "worker", "billing", "search", "docs"], 1, 3) == ["billing", "docs"]


def test_shard_runs_together_cover_every_item_exactly_once(tmp_path: Path, isolated: Path) -> None:
    items = ["api", "web", "worker", "billing", "search", "docs", "auth"]
    log = tmp_path / "ran.txt"
    loop = write_loop(
        tmp_path,
        f"""
        name: sharded
        agent: {{command: 'echo "$RALPH_ITEM" >> "$RAN"; echo "<promise>COMPLETE</promise>"'}}
        env: {{RAN: "{log}"}}
        until: {{max_iterations: 1, output_contains: "<promise>COMPLETE</promise>"}}
        telemetry: {{enabled: false}}
        batch: {{items: {json.dumps(items)}, parallel: 4}}
    """,
    )
    for count in range(1, 6):
        ran: list[str] = []
        for index in range(1, count + 1):
            log.write_text("")
            result = ralph("run", str(loop), "--shard", f"{index}/{count}")
            assert result.returncode == 0, result.stdout + result.stderr
            got = log.read_text().split()
            assert sorted(got) == sorted(shard_items(items, index, count))
            ran += got
        assert sorted(ran) == sorted(items), f"N={count}"  # together: every item, exactly once
    shards = [r["shard"] for r in rows(isolated, "SELECT shard FROM runs ORDER BY started")]
    assert shards == [f"{i}/{n}" for n in range(1, 6) for i in range(1, n + 1)]


def test_every_span_of_every_shard_carries_the_batch(tmp_path: Path, isolated: Path) -> None:
    loop = agent_loop(tmp_path, "items: [api, web, worker, docs, auth]\nparallel: 2")
    for index in (1, 2, 3):
        result = ralph("run", str(loop), "--shard", f"{index}/3", env={"RALPH_BATCH_ID": "nightly-42"})
        assert result.returncode == 0, result.stdout + result.stderr
    found = spans(isolated)
    kinds = {s["name"] for s in found}
    assert kinds == {"ralph.run", "ralph.iteration", "ralph.step"}
    assert len([s for s in found if s["name"] == "ralph.run"]) == 3
    assert {s["attributes"].get("ralph.batch") for s in found} == {"nightly-42"}
    assert {r["batch"] for r in rows(isolated, "SELECT batch FROM runs")} == {"nightly-42"}


def test_the_default_batch_name_is_the_loop_and_the_utc_date(tmp_path: Path, isolated: Path) -> None:
    before = datetime.now(UTC).date().isoformat()
    loop = agent_loop(tmp_path, "items: [api]")
    assert ralph("run", str(loop)).returncode == 0
    after = datetime.now(UTC).date().isoformat()
    names = {s["attributes"].get("ralph.batch") for s in spans(isolated)}
    assert names in ({f"nightly-{before}"}, {f"nightly-{after}"})
    assert batch_id("x", {"RALPH_BATCH_ID": " gh-7 "}) == "gh-7"
    # a loop without a batch gets no batch attribute
    plain = write_loop(tmp_path, "name: plain\nagent: {command: 'true'}\nuntil: {max_iterations: 1}\n", "p.yaml")
    (isolated / "traces.jsonl").unlink()
    assert ralph("run", str(plain)).returncode == 0
    assert all("ralph.batch" not in s["attributes"] for s in spans(isolated))


# -- interrupts --------------------------------------------------------------------------------------------
def test_sigint_ends_every_running_item(tmp_path: Path, isolated: Path) -> None:
    ready = tmp_path / "ready"
    ready.mkdir()
    script = (
        "import os, pathlib, sys, time; (pathlib.Path(sys.argv[1]) / os.environ['RALPH_ITEM']).touch(); "
        "print('waiting', flush=True)\nwhile True: time.sleep(1)"
    )
    loop = write_loop(
        tmp_path,
        f"""
        name: endless
        agent: {{command: {yaml_list([PY, "-c", script, str(ready)])}}}
        until: {{max_iterations: 5}}
        batch: {{items: [a, b, c, d], parallel: 3}}
    """,
    )
    proc = subprocess.Popen(
        [PY, "-m", "ralph", "run", str(loop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(ready.iterdir())) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(list(ready.iterdir())) == 3  # three running at once, the fourth waiting
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    statuses = sorted(s["status"] for s in rows(isolated, "SELECT status FROM sessions"))
    assert statuses == ["interrupted"] * 3  # the fourth item never started
    assert rows(isolated, "SELECT status FROM runs") == [{"status": "interrupted"}]


# -- the live table ------------------------------------------------------------------------------------------
def test_the_table_of_items() -> None:
    from rich.console import Console

    table = render_table(
        [
            ItemRow("api", "complete", 2, "ses_aaaaaaaaaaaaAAAAAAAAAAAAAA", "success condition held", 0.0, 65.0),
            ItemRow("web", "running", 1, "ses_bbbbbbbbbbbbBBBBBBBBBBBBBB", "agent ok", 10.0),
            ItemRow("worker"),
        ],
        now=100.0,
        width=120,
    )
    console = Console(width=120, record=True, force_terminal=False)
    console.print(table)
    text = console.export_text()
    lines = text.splitlines()
    assert lines[0].split() == ["item", "state", "iter", "elapsed", "session", "last"]
    assert lines[1].split() == [
        "api",
        "complete",
        "2",
        "1:05",
        "ses_aaaaaaaaaaaaAAAAAAAAAAAAAA",
        "success",
        "condition",
        "held",
    ]
    assert lines[2].split() == ["web", "running", "1", "1:30", "ses_bbbbbbbbbbbbBBBBBBBBBBBBBB", "agent", "ok"]
    assert lines[3].split() == ["worker", "pending"]
    assert "1 complete · 1 running · 1 pending" in text

    many = [ItemRow(f"item-{i}") for i in range(40)] + [ItemRow("busy", "running", 1, "ses_x", "", 0.0)]
    console = Console(width=80, record=True, force_terminal=False)
    console.print(render_table(many, now=1.0, width=80, max_rows=10))
    text = console.export_text()
    assert "busy" in text and "31 not shown" in text  # the running item is never the one left out


def test_a_tty_shows_the_live_table_of_items(tmp_path: Path, isolated: Path) -> None:
    go = tmp_path / "go"
    ready = tmp_path / "ready"
    ready.mkdir()
    script = (
        "import os, pathlib, sys, time; (pathlib.Path(sys.argv[1]) / os.environ['RALPH_ITEM']).touch(); "
        "print('waiting', flush=True)\nwhile not os.path.exists(sys.argv[2]): time.sleep(0.02)\n"
        "print('<promise>COMPLETE</promise>')"
    )
    loop = write_loop(
        tmp_path,
        f"""
        name: tty-batch
        agent: {{command: {yaml_list([PY, "-c", script, str(ready), str(go)])}}}
        until: {{max_iterations: 1, output_contains: "<promise>COMPLETE</promise>"}}
        batch: {{items: [api, web, docs], parallel: 2}}
    """,
    )
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ralph", "run", str(loop)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"},
        close_fds=True,
    )
    os.close(slave)
    raw = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready_fds, _, _ = select.select([master], [], [], 0.1)
            if ready_fds:
                try:
                    raw += os.read(master, 65536)
                except OSError:
                    break
            text = raw.decode("utf-8", "replace")
            # handshake: two agents are running and the table showed them so before they may finish
            if len(list(ready.iterdir())) == 2 and "2 running · 1 pending" in text:
                go.touch()
            if proc.poll() is not None and not ready_fds:
                break
    finally:
        go.touch()
        proc.wait(timeout=30)
        os.close(master)
    text = raw.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "[api 1 agent] waiting" in text and "[docs 1 agent] waiting" in text
    assert "item" in text and "state" in text and "session" in text and "elapsed" in text
    assert "3 complete" in text  # the final table stays as the summary
    session_ids = [r["id"] for r in rows(isolated, "SELECT id FROM sessions")]
    assert all(sid in text for sid in session_ids)
