"""agent.retry with real children: attempts, backoff, on_exit_codes, on_output; each attempt is its
own step row, span and log with RALPH_ATTEMPT, in the same session; the wait shows on the console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from handshake import db_rows, spans

from helpers import PY, ralph, write_loop, yaml_list

# Writes its env to $DUMP/attempt-N.json, prints a line and exits with the code given for its
# attempt in $CODES (a JSON list; the last one repeats).
AGENT = [
    PY,
    "-c",
    (
        "import json, os, sys, pathlib\n"
        "a = int(os.environ['RALPH_ATTEMPT'])\n"
        "(pathlib.Path(os.environ['DUMP']) / f'attempt-{a}.json').write_text(json.dumps(dict(os.environ)))\n"
        "codes = json.loads(os.environ['CODES'])\n"
        "code = codes[min(a, len(codes)) - 1]\n"
        "print(os.environ.get('SAY', '') or f'attempt {a} exits {code}', flush=True)\n"
        "sys.exit(code)\n"
    ),
]


def retry_loop(tmp_path: Path, codes: list[int], retry: str, say: str = "") -> Path:
    dump = tmp_path / "dump"
    dump.mkdir(exist_ok=True)
    return write_loop(
        tmp_path,
        f"""
        name: flaky
        env: {{DUMP: "{dump}", CODES: "{json.dumps(codes).replace('"', "")}", SAY: "{say}"}}
        agent:
          command: {yaml_list(AGENT)}
          retry: {retry}
        until: {{max_iterations: 1}}
        """,
    )


def agent_steps(state: Path) -> list[dict[str, Any]]:
    return db_rows(
        state, "SELECT session_id, attempt, status, exit_code, log_path FROM steps WHERE name = 'agent' ORDER BY id"
    )


def step_spans(state: Path) -> list[dict[str, Any]]:
    found = [s["attrs"] for s in spans(state) if s["name"] == "ralph.step"]
    return sorted(found, key=lambda a: int(a["ralph.attempt"]))


def test_exit_75_twice_then_success(tmp_path: Path, isolated: Path) -> None:
    loop = retry_loop(tmp_path, [75, 75, 0], "{attempts: 3, backoff: 10ms, max_backoff: 20ms, on_exit_codes: [75]}")
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = agent_steps(isolated)
    assert [(s["attempt"], s["status"], s["exit_code"]) for s in steps] == [
        (1, "failed", 75),
        (2, "failed", 75),
        (3, "ok", 0),
    ]
    # One session: every attempt ran in it, each with its own log.
    assert len({s["session_id"] for s in steps}) == 1
    assert [Path(s["log_path"]).name for s in steps] == ["agent.log", "agent.attempt2.log", "agent.attempt3.log"]
    assert [Path(s["log_path"]).read_text() for s in steps] == [
        "attempt 1 exits 75\n",
        "attempt 2 exits 75\n",
        "attempt 3 exits 0\n",
    ]
    envs = [json.loads((tmp_path / "dump" / f"attempt-{n}.json").read_text()) for n in (1, 2, 3)]
    assert [e["RALPH_ATTEMPT"] for e in envs] == ["1", "2", "3"]
    assert {e["OPENCODE_SESSION_ID"] for e in envs} == {steps[0]["session_id"]}
    assert len({e["TRACEPARENT"] for e in envs}) == 3  # each attempt its own span
    # The wait shows on the console, before the attempt it precedes.
    assert proc.stdout.count("retrying in") == 2
    assert "(attempt 2)" in proc.stdout and "(attempt 3)" in proc.stdout
    spans = step_spans(isolated)
    assert [(int(s["ralph.attempt"]), int(s["process.exit.code"])) for s in spans] == [(1, 75), (2, 75), (3, 0)]
    assert db_rows(isolated, "SELECT status FROM sessions") == [{"status": "ok"}]
    run_id = db_rows(isolated, "SELECT id FROM runs")[0]["id"]
    records = [json.loads(line) for line in (isolated / "logs" / run_id / "ralph.jsonl").read_text().splitlines()]
    assert [r["attempt"] for r in records if r["message"] == "agent retry"] == [1, 2]


def test_on_output_retries_a_rate_limit_whatever_the_exit_code(tmp_path: Path, isolated: Path) -> None:
    loop = retry_loop(
        tmp_path,
        [1, 0],
        '{attempts: 2, backoff: 10ms, on_exit_codes: [75], on_output: ["rate limit"]}',
        say="Error: Rate Limit exceeded, slow down",
    )
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(s["attempt"], s["status"]) for s in agent_steps(isolated)] == [(1, "failed"), (2, "ok")]


def test_a_failure_that_matches_no_filter_is_not_retried(tmp_path: Path, isolated: Path) -> None:
    loop = retry_loop(tmp_path, [1, 0], '{attempts: 3, backoff: 10ms, on_exit_codes: [75], on_output: ["rate limit"]}')
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 1
    assert [(s["attempt"], s["status"]) for s in agent_steps(isolated)] == [(1, "failed")]
    assert "retrying" not in proc.stdout


def test_exhausted_attempts_fail_the_iteration(tmp_path: Path, isolated: Path) -> None:
    loop = retry_loop(tmp_path, [75], "{attempts: 3, backoff: 10ms, on_exit_codes: [75]}")
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 1
    assert [(s["attempt"], s["exit_code"]) for s in agent_steps(isolated)] == [(1, 75), (2, 75), (3, 75)]
    assert db_rows(isolated, "SELECT status FROM sessions") == [{"status": "failed"}]
    assert proc.stdout.count("retrying in") == 2


def test_without_filters_any_failure_is_retried(tmp_path: Path, isolated: Path) -> None:
    loop = retry_loop(tmp_path, [3, 0], "{attempts: 2, backoff: 10ms}")
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 0
    assert [(s["attempt"], s["exit_code"]) for s in agent_steps(isolated)] == [(1, 3), (2, 0)]


def test_json_console_reports_the_wait(tmp_path: Path) -> None:
    loop = retry_loop(tmp_path, [75, 0], "{attempts: 2, backoff: 10ms, on_exit_codes: [75]}")
    proc = ralph("run", str(loop), "--json", cwd=tmp_path)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    waits = [e for e in events if e["event"] == "retry.wait"]
    assert len(waits) == 1 and waits[0]["step"] == "agent" and waits[0]["seconds"] >= 0
