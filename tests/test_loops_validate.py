"""Every shipped loop file validates, the nightly batch example runs, and the deployment examples
(cron, systemd, CI) are well-formed and say what the code does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from gitrepo import drop_session_refs

from helpers import ROOT, ralph
from ralph.batch import shard_items

LOOPS = sorted((ROOT / "loops").glob("*.y*ml"))
EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("loop", LOOPS, ids=[p.name for p in LOOPS])
def test_every_loop_file_validates(loop: Path) -> None:
    result = ralph("validate", str(loop))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_loops_folder_is_not_empty() -> None:
    assert {p.name for p in LOOPS} >= {"demo.yaml", "nightly-batch.yaml"}


def test_the_nightly_batch_runs_shard_by_shard(tmp_path: Path, isolated: Path,
                                              request: pytest.FixtureRequest) -> None:
    loop = ROOT / "loops" / "nightly-batch.yaml"
    items = yaml.safe_load(loop.read_text())["batch"]["items"]
    titles: list[str] = []
    request.addfinalizer(lambda: drop_session_refs(ROOT, isolated))  # it runs in this checkout
    for index in (1, 2, 3):
        result = ralph("run", str(loop), "--shard", f"{index}/3", "--json", env={"RALPH_BATCH_ID": "test-night"})
        assert result.returncode == 0, result.stdout + result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        ended = sorted(e["item"] for e in events if e["event"] == "item.end" and e["status"] == "complete")
        assert ended == sorted(shard_items(items, index, 3))
        titles += [e["title"] for e in events if e["event"] == "iteration.start"]
    assert sorted(t.split()[3] for t in titles) == sorted(items)  # "Nightly upkeep of <item> (date) #1"
    logged = (isolated / "iterations.log").read_text().splitlines()  # the seed's log-session.sh, per session
    assert len(logged) == len(items) and all(
        line.startswith("Running in session: Nightly upkeep of ") for line in logged
    )


def test_shell_examples_parse() -> None:
    for script in EXAMPLES.glob("*.sh"):
        assert subprocess.run(["/bin/sh", "-n", str(script)], capture_output=True).returncode == 0, script
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_the_crontab_line_is_a_nightly_shard() -> None:
    lines = [
        ln for ln in (EXAMPLES / "nightly.crontab").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5])
    command = fields[5]
    assert "ralph run loops/nightly-batch.yaml --shard 1/3" in command
    assert "%" not in command.replace("\\%", "")  # cron turns a bare % into a newline


def test_the_ci_workflow_has_a_shard_matrix_and_an_inbound_traceparent() -> None:
    workflow = yaml.safe_load((EXAMPLES / "github-actions-nightly.yml").read_text())
    job = workflow["jobs"]["shard"]
    shards = job["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1)) and job["strategy"]["fail-fast"] is False
    assert "TRACEPARENT" in job["env"] and "RALPH_BATCH_ID" in job["env"]
    runs = [step.get("run", "") for step in job["steps"]]
    assert any(f"--shard ${{{{ matrix.shard }}}}/{len(shards)}" in r for r in runs)
    # the plan job's recipe makes a valid W3C traceparent
    recipe = workflow["jobs"]["plan"]["steps"][0]["run"].replace('>> "$GITHUB_OUTPUT"', "")
    out = subprocess.run(
        ["/bin/sh", "-c", recipe],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "1", "GITHUB_RUN_ATTEMPT": "1"},
    ).stdout.strip()
    assert re.fullmatch(r"traceparent=00-[0-9a-f]{32}-[0-9a-f]{16}-01", out)


def test_the_systemd_units() -> None:
    service = (EXAMPLES / "systemd" / "ralph-nightly@.service").read_text()
    timer = (EXAMPLES / "systemd" / "ralph-nightly@.timer").read_text()
    assert "ExecStart=/usr/bin/env ralph run loops/nightly-batch.yaml --shard %I" in service
    assert "OnCalendar=" in timer and "WantedBy=timers.target" in timer


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    for unit in ("ralph-nightly@.service", "ralph-nightly@.timer"):
        shutil.copy(EXAMPLES / "systemd" / unit, tmp_path / unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", "ralph-nightly@1-3.service", "ralph-nightly@1-3.timer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [ln for ln in result.stderr.splitlines() if "ralph-nightly" in ln]
    assert result.returncode == 0 and not problems, result.stderr
