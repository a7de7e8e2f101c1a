"""``ralph report`` over real runs: a batch with failing items (and HTML in its title, items, prompt and
agent output), several state folders merged, the Markdown and JSON forms, git provenance and stop
reasons where the history has them, ``ralph run --report`` while a run goes, and the package's templates
in a real (non-editable) install."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import PY, ROOT, ralph, write_loop, yaml_list

HOSTILE_ITEM = "<img src=x onerror=window.pwned=2>"
AGENT = r"""
import os, pathlib, sys, time
item = os.environ["RALPH_ITEM"]
prompt = sys.stdin.read()
print("prompt was: " + prompt, flush=True)
print("agent says <script>window.pwned=3</script> about " + item, flush=True)
gate = os.environ.get("GATE")
if gate:  # the live-report test: say we run, then wait until the test has seen the page
    pathlib.Path(gate, "started").touch()
    deadline = time.monotonic() + 60
    while not pathlib.Path(gate, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
if item.startswith("bad") or "<" in item:
    print("failing on purpose: exit 4", flush=True)
    sys.exit(4)
print("<promise>COMPLETE</promise>", flush=True)
"""


def batch_loop(tmp_path: Path, items: list[str], *, parallel: int = 2, env: str = "") -> Path:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    return write_loop(tmp_path, f"""
        name: nightly
        title: "<script>window.pwned=1</script> {{item}} #{{iteration}}"
        {env}
        agent:
          command: {yaml_list([PY, str(script)])}
          prompt: "Work on {{item}} <script>window.pwned=4</script>"
        until: {{max_iterations: 2, output_contains: "<promise>COMPLETE</promise>"}}
        batch:
          items: {json.dumps(items)}
          parallel: {parallel}
    """)


def db_rows(state: Path, sql: str) -> list[dict]:
    db = sqlite3.connect(state / "ralph.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    finally:
        db.close()


class Page(HTMLParser):
    """What a test reads back from the HTML: links, sources, rows of the items table, text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.sources: list[str] = []
        self.item_rows: list[dict[str, str]] = []
        self.bars = 0
        self.text: list[str] = []
        self._table: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        if a.get("href"):
            self.links.append(a["href"] or "")
        if a.get("src"):
            self.sources.append(a["src"] or "")
        if tag == "tr" and self._table == "items" and "data-item" in a:
            self.item_rows.append({"item": a["data-item"] or "", "class": a.get("class") or ""})
        if tag == "g" and a.get("class") == "bar":
            self.bars += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def run_batch(tmp_path: Path, items: list[str], *args: str, batch_id: str | None = None,
              **kw: str) -> subprocess.CompletedProcess[str]:
    loop = batch_loop(tmp_path, items, **kw)
    return ralph("run", str(loop), "-q", *args, env={"RALPH_BATCH_ID": batch_id} if batch_id else None)


ITEMS = ["good-1", "bad-2", HOSTILE_ITEM, "good-4"]


def test_html_report_of_a_batch_shows_items_sessions_and_escapes_everything(tmp_path: Path, isolated: Path) -> None:
    proc = run_batch(tmp_path, ITEMS, batch_id="<i>night</i>")
    assert proc.returncode == 1, proc.stderr
    out = ralph("report")
    assert out.returncode == 0, out.stderr
    assert "wrote report.html" in out.stderr
    text = (tmp_path / "report.html").read_text()
    page = Page(text)

    # Failed items first, every item once; the stop reasons the run gave each of them.
    assert [r["item"] for r in page.item_rows[:2]] == ["bad-2", HOSTILE_ITEM]
    assert all("bad" in r["class"] for r in page.item_rows[:2])
    assert sorted(r["item"] for r in page.item_rows) == sorted(ITEMS)
    body = "".join(page.text)
    assert "max_iterations (2) reached" in body and "success condition held" in body
    assert "2 of 4 items did not succeed" in body

    sessions = db_rows(isolated, "SELECT id, trace_id FROM sessions")
    assert len(sessions) == 6  # two failing items x 2 iterations, two good ones x 1
    for s in sessions:
        assert s["id"] in body and s["trace_id"] in body
    assert page.bars == len(sessions)  # one timeline bar per session

    # Logs linked by relative path, and each link leads to the log.
    logs = [link for link in page.links if not link.startswith("#")]
    assert logs and all(not link.startswith(("/", "http:", "https:", "file:")) for link in logs)
    assert all((tmp_path / link).resolve().is_file() for link in logs)
    assert not page.sources  # nothing loaded from anywhere

    # The failed step's log tail is there, and every hostile string is text, not markup.
    assert "failing on purpose: exit 4" in body
    for n in (1, 3, 4):
        assert f"<script>window.pwned={n}</script>" in body  # shown as text...
        assert f"<script>window.pwned={n}" not in text  # ...never as a tag
    assert HOSTILE_ITEM in body and "<img" not in text
    assert "nightly: batch <i>night</i>" in body and "<i>night</i>" not in text  # the batch ID too
    assert "<script>" in text  # the page's own script, once
    assert text.count("<script>") == 1


def test_markdown_and_json_forms(tmp_path: Path, isolated: Path) -> None:
    assert run_batch(tmp_path, ITEMS).returncode == 1
    md = ralph("report", "--format", "md")
    assert md.returncode == 0, md.stderr
    lines = md.stdout.splitlines()
    table = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert "| item | status | iterations | cost | stop reason |" in lines
    assert sum("❌" in line for line in table) == 2 and sum("✅" in line for line in table) == 2
    assert table.index(next(line for line in table if "bad-2" in line)) < \
        table.index(next(line for line in table if "good-1" in line))
    assert "<script" not in md.stdout and "<img" not in md.stdout  # GitHub would render raw HTML
    assert "&lt;img src=x onerror=window.pwned=2&gt;" in md.stdout
    assert "2 of 4 items did not succeed" in md.stdout

    js = ralph("report", "--format", "json", "-o", "out.json")
    assert js.returncode == 0, js.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["kind"] == "batch" and data["totals"]["items_failed"] == 2 and data["totals"]["iterations"] == 6
    assert {s["id"] for s in data["sessions"]} == {r["id"] for r in db_rows(isolated, "SELECT id FROM sessions")}
    failed = [i for i in data["items"] if i["succeeded"] is False]
    assert {i["item"] for i in failed} == {"bad-2", HOSTILE_ITEM}
    assert all(i["stop_reason"] == "max_iterations (2) reached" and i["iterations"] == 2 for i in failed)
    tails = [s["log_tail"] for s in data["sessions"] if s["log_tail"]]
    assert len(tails) == 4 and all("failing on purpose" in t for t in tails)
    # -o - and the default of md/json: standard output.
    assert json.loads(ralph("report", "--format", "json", "-o", "-").stdout)["ident"] == data["ident"]


def test_shards_in_several_state_folders_merge_into_one_batch(tmp_path: Path) -> None:
    loop = batch_loop(tmp_path, ["a1", "bad-b2", "c3", "d4", "e5"])
    env = {"RALPH_BATCH_ID": "night-42"}
    for n in (1, 2):
        proc = ralph("run", str(loop), "-q", "--shard", f"{n}/2", "--state-dir", f"shard{n}", env=env)
        assert proc.returncode in (0, 1), proc.stderr
    # A later, unrelated run in one of them must not hide the batch when it is named.
    out = ralph("report", "night-42", "--state-dir", "shard1", "--state-dir", "shard2", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["kind"] == "batch" and data["ident"] == "night-42"
    assert len(data["runs"]) == 2 and {r["shard"] for r in data["runs"]} == {"1/2", "2/2"}
    assert sorted(i["item"] for i in data["items"]) == ["a1", "bad-b2", "c3", "d4", "e5"]
    assert data["items"][0]["item"] == "bad-b2"
    # Without an ID: the newest run's batch, over both folders; the same folder twice counts once.
    again = ralph("report", "--state-dir", "shard2", "--state-dir", "shard1", "--state-dir", "shard1/",
                  "--format", "json")
    assert json.loads(again.stdout)["runs"] == data["runs"]
    # State folders downloaded elsewhere (CI artifacts): the logs are found, and linked, where they are now.
    (tmp_path / "artifacts").mkdir()
    for n in (1, 2):
        (tmp_path / f"shard{n}").rename(tmp_path / "artifacts" / f"state-{n}")
    html = ralph("report", "--state-dir", "artifacts/state-1", "--state-dir", "artifacts/state-2", "-o", "merged.html")
    assert html.returncode == 0, html.stderr
    text = (tmp_path / "merged.html").read_text()
    assert all(f'data-item="{i}"' in text for i in ("a1", "bad-b2", "c3", "d4", "e5"))
    logs = [link for link in Page(text).links if not link.startswith("#")]
    assert len(logs) == len(data["sessions"]) and all(link.startswith("artifacts/state-") for link in logs)
    assert all((tmp_path / link).is_file() for link in logs)
    assert "failing on purpose: exit 4" in text  # the failed log's tail, read from the moved folder


def test_a_run_by_id_and_usage_errors(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, f"""
        name: single
        title: "single #{{iteration}}"
        agent:
          command: {yaml_list([PY, "-c", "import sys; print('nope'); sys.exit(2)"])}
        until: {{max_iterations: 2}}
    """)
    assert ralph("run", str(loop), "-q").returncode == 1
    run_id = db_rows(isolated, "SELECT id FROM runs")[0]["id"]
    out = ralph("report", run_id[:12], "--format", "md")
    assert out.returncode == 0, out.stderr
    assert "| # | session | status | duration | cost | changed |" in out.stdout
    assert out.stdout.count("| failed |") == 2
    traced = ralph("report", "--trace-url", "http://127.0.0.1:6006/projects/x/traces/{trace_id}", "-o", "t.html")
    assert traced.returncode == 0, traced.stderr
    trace_id = db_rows(isolated, "SELECT trace_id FROM runs")[0]["trace_id"]
    assert f'href="http://127.0.0.1:6006/projects/x/traces/{trace_id}"' in (tmp_path / "t.html").read_text()

    for args, message in [(["no-such-run"], "no run or batch 'no-such-run'"),
                          (["--format", "pdf"], "--format 'pdf'"),
                          (["--trace-url", "http://x/"], "{trace_id}"),
                          (["--trace-url", "javascript:alert({trace_id})"], "http://"),
                          (["--state-dir", "nowhere"], "no history at")]:
        bad = ralph("report", *args, "-o", "never.html")
        assert bad.returncode in (1, 2), (args, bad.stderr)
        assert message in bad.stderr, (args, bad.stderr)
    assert not (tmp_path / "never.html").exists()


def test_git_provenance_and_stop_reason_columns_are_shown(tmp_path: Path, isolated: Path) -> None:
    """Issue 12's and 13's columns, written into the history of a real run (added here if this
    history's schema does not have them yet)."""
    assert run_batch(tmp_path, ["good-1", "bad-2"]).returncode == 1
    db = sqlite3.connect(isolated / "ralph.db")
    try:
        have = {r[1] for r in db.execute("PRAGMA table_info(sessions)")}
        for col, kind in [("files_changed", "INTEGER"), ("insertions", "INTEGER"), ("deletions", "INTEGER"),
                          ("commits", "TEXT"), ("changed_files", "TEXT"), ("git_before", "TEXT"),
                          ("git_after", "TEXT"), ("feedback", "TEXT")]:
            if col not in have:
                db.execute(f"ALTER TABLE sessions ADD COLUMN {col} {kind}")
        if "stop_reason" not in {r[1] for r in db.execute("PRAGMA table_info(runs)")}:
            db.execute("ALTER TABLE runs ADD COLUMN stop_reason TEXT")
        db.execute("UPDATE sessions SET files_changed = 2, insertions = 12, deletions = 3, "
                   "changed_files = ?, commits = ?, git_before = 'aaa', git_after = 'bbb', "
                   "feedback = 'the check failed <b>twice</b>' WHERE item = 'bad-2'",
                   (json.dumps(["src/app.py", "docs/<evil>.md"]), json.dumps(["bbb"])))
        db.execute("UPDATE runs SET stop_reason = 'max_iterations'")
        db.commit()
    finally:
        db.close()
    out = ralph("report", "-o", "git.html")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "git.html").read_text()
    body = "".join(Page(text).text)
    assert "+12 -3, 2 files" in body and "src/app.py" in body and "docs/<evil>.md" in body
    assert "<evil>" not in text and "<b>twice</b>" not in text and "the check failed <b>twice</b>" in body
    assert "+24 -6" in body  # the totals: two sessions of bad-2
    assert "max_iterations" in body
    md = ralph("report", "--format", "md").stdout
    assert "Changed: +24 -6, 4 files" in md
    data = json.loads(ralph("report", "--format", "json").stdout)
    assert data["runs"][0]["stop_reason"] == "max_iterations — 1 of 2 items did not succeed: bad-2 (max_iterations (2) reached)"
    assert data["has_git"]
    changed = [s["changes"] for s in data["sessions"] if s["changes"]]
    assert changed and changed[0]["files"] == ["src/app.py", "docs/<evil>.md"] and changed[0]["commits"] == ["bbb"]


def test_run_report_is_refreshed_while_the_run_goes(tmp_path: Path, isolated: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    loop = batch_loop(tmp_path, ["only"], env=f'env: {{GATE: "{gate}"}}')
    report = tmp_path / "live.html"
    child = subprocess.Popen([PY, "-m", "ralph", "run", str(loop), "-q", "--report", str(report)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while not (gate / "started").exists():  # the agent runs
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.02)
        session = db_rows(isolated, "SELECT id FROM sessions")[0]["id"]
        text = ""
        while session not in text or "st-running" not in text:  # a refresh after the session began
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.05)
            text = report.read_text() if report.exists() else ""
        assert '<meta http-equiv="refresh"' in text and "live" in text
        (gate / "go").touch()
        _, err = child.communicate(timeout=60)
    finally:
        (gate / "go").touch()
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    final = report.read_text()
    assert "http-equiv=\"refresh\"" not in final and "st-complete" in final and session in final
    assert "success condition held" in final  # the run's end, recorded before the last write
    assert not list(tmp_path.glob(".live.html.*"))  # no half-written file left behind


def test_run_report_into_a_missing_folder_is_a_usage_error(tmp_path: Path, isolated: Path) -> None:
    loop = batch_loop(tmp_path, ["a"])
    proc = ralph("run", str(loop), "--report", str(tmp_path / "nope" / "r.html"))
    assert proc.returncode == 2 and "--report" in proc.stderr
    assert not (isolated / "ralph.db").exists()


def test_report_without_history_and_lazy_imports(tmp_path: Path) -> None:
    proc = ralph("report")
    assert proc.returncode == 1 and "no history at" in proc.stderr
    code = ("import sys, runpy; sys.argv = ['ralph', '--help']\n"
            "try:\n    runpy.run_module('ralph', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "assert 'jinja2' not in sys.modules and 'ralph.report' not in sys.modules, 'imported'")
    check = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=False)
    assert "imported" not in check.stderr, check.stderr


@pytest.mark.slow
def test_templates_ship_in_the_wheel(tmp_path: Path, isolated: Path) -> None:
    """A non-editable install renders the page: the templates are package data."""
    wheel = subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, check=False)
    assert wheel.returncode == 0, wheel.stderr
    target = tmp_path / "site"
    built = next((tmp_path / "dist").glob("*.whl"))
    inst = subprocess.run([PY, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(built)],
                          capture_output=True, text=True, check=False)
    assert inst.returncode == 0, inst.stderr
    assert run_batch(tmp_path, ["good-1", "bad-2"]).returncode == 1
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = textwrap.dedent("""
        import sys, ralph
        assert ralph.__file__.startswith(sys.argv[1]), ralph.__file__
        from ralph.cli import main
        sys.argv = ["ralph", "report", "-o", "wheel.html"]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert 'id="gantt"' in (tmp_path / "wheel.html").read_text()
