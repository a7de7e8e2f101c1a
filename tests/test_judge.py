"""Loop judgement through the real CLI: why a run stops (stop_reason everywhere), the same failure
(fingerprints), evidence over claims, feedback carried forward, an echoed prompt claiming nothing."""

from __future__ import annotations

import json
from pathlib import Path

from handshake import db_rows, spans

from helpers import PY, ralph, write_loop, yaml_list
from ralph.judge import TAIL_BYTES, Failure, fingerprint, normalise

PROMISE = "<promise>COMPLETE</promise>"

# A failing test run whose details change every time: PID, time, temp folder, duration, object address.
NOISY_FAILURE = """
import os, sys, time, tempfile
name = sys.argv[1]
d = tempfile.mkdtemp()
print(f"tests/test_api.py::{name} FAILED")
print(f"E   AssertionError: assert {os.getpid()} == 0 (pid {os.getpid()}, at 0x{id(d):x})")
print(f"E   in {d}/conftest.py:{os.getpid() % 97}")
print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} worker {os.urandom(6).hex()} done")
print(f"1 failed in {time.time() % 10:.2f}s")
sys.exit(1)
"""


def runs(state: Path) -> list[dict]:
    return db_rows(state, "SELECT * FROM runs ORDER BY started")


def sessions(state: Path) -> list[dict]:
    return db_rows(state, "SELECT * FROM sessions ORDER BY iteration")


def json_events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


# -- fingerprints ------------------------------------------------------------------------------


def test_fingerprints_ignore_what_changes_from_run_to_run() -> None:
    one = """tests/test_api.py::test_login FAILED
E   AssertionError: assert 4211 == 0 (pid 4211, at 0x7f3a2c1b9e80)
E   in /tmp/tmpab12cd_x/conftest.py:12
2026-11-30T01:02:03 worker 3fa9c0e1d2b4 done in 350ms
request 5f0b8d5e-7c1a-4f3e-9a52-72616c706821 session ses_22a11b6ba0011o1PFtsTG85Kh5
1 failed in 0.53s"""
    two = """tests/test_api.py::test_login FAILED
E   AssertionError: assert 977 == 0 (pid 977, at 0x55d0aa01ff10)
E   in /tmp/tmpzz99yy_q/conftest.py:40
2026-12-01T23:59:59.123Z worker 0a1b2c3d4e5f done in 2.1s
request 0b5f8d5e-7c1a-4f3e-9a52-72616c706822 session ses_22a11e9fe001dgjWjXzVwTGmFH
1 failed in 12.04s"""
    assert normalise(one) == normalise(two)
    assert fingerprint("check", one) == fingerprint("check", two)
    assert "<tmp>" in normalise(one) and "<time>" in normalise(one) and "<hex>" in normalise(one)


def test_distinct_failures_have_distinct_fingerprints() -> None:
    base = "tests/test_api.py::test_login FAILED\nE   AssertionError: assert 1 == 0\n1 failed in 0.5s"
    other_test = base.replace("test_login", "test_logout")
    other_message = base.replace("AssertionError: assert 1 == 0", "KeyError: 'user'")
    prints = {fingerprint("check", t) for t in (base, other_test, other_message)}
    assert len(prints) == 3
    assert fingerprint("check", base) != fingerprint("agent", base)  # another step failing is another failure
    assert fingerprint("agent", base, "timeout") != fingerprint("agent", base, "failed")
    # Digits inside a name are part of the name (test_case_1 is not test_case_2).
    assert fingerprint("check", "test_case_1 FAILED") != fingerprint("check", "test_case_2 FAILED")
    assert Failure("check", "failed", 1, tail=base).fingerprint == fingerprint("check", base)


# -- stop reasons ------------------------------------------------------------------------------


def test_the_same_failure_stops_the_loop(tmp_path: Path, isolated: Path) -> None:
    check = tmp_path / "check.py"
    check.write_text(NOISY_FAILURE)
    loop = write_loop(tmp_path, f"""
        name: stuck
        agent: {{command: {yaml_list([PY, "-c", "print('working on it')"])}}}
        until:
          max_iterations: 10
          same_failure: 3
          command_succeeds: {yaml_list([PY, str(check), "test_login"])}
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 1, result.stdout + result.stderr
    rows = sessions(isolated)
    assert len(rows) == 3  # three in a row with one fingerprint, though every output differed
    assert len({r["fingerprint"] for r in rows}) == 1 and rows[0]["fingerprint"]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("ralph: failed: the same failure in 3 iterations"), last
    assert rows[0]["id"] in last and rows[2]["id"] in last and "check exit 1" in last and "1 failed in" in last

    (run,) = runs(isolated)
    assert run["stop_reason"] == "same_failure" and run["exit_code"] == 1
    text = ralph("show", run["id"]).stdout
    assert f"{run['id']}  loop stuck  failed (same_failure)  exit 1" in text
    assert text.count(f"failure {rows[0]['fingerprint']}") == 3
    shown = json.loads(ralph("show", run["id"], "--json").stdout)
    assert shown["stop_reason"] == "same_failure"
    assert [s["fingerprint"] for s in shown["sessions"]] == [rows[0]["fingerprint"]] * 3
    (run_span,) = [s for s in spans(isolated) if s["name"] == "ralph.run"]
    assert run_span["attrs"]["ralph.stop_reason"] == "same_failure"
    iteration_spans = [s for s in spans(isolated) if s["name"] == "ralph.iteration"]
    assert {s["attrs"]["ralph.failure.fingerprint"] for s in iteration_spans} == {rows[0]["fingerprint"]}


def test_distinct_failures_do_not_count_as_the_same(tmp_path: Path, isolated: Path) -> None:
    check = tmp_path / "check.py"
    check.write_text(NOISY_FAILURE)
    # Iterations 1, 2, 4, 5 fail on test_alpha, 3 on test_beta: never three in a row.
    pick = tmp_path / "pick.py"
    pick.write_text(f"import os, sys, subprocess\n"
                    f"name = 'test_beta' if os.environ['RALPH_ITERATION'] == '3' else 'test_alpha'\n"
                    f"sys.exit(subprocess.call([sys.executable, {str(check)!r}, name]))\n")
    loop = write_loop(tmp_path, f"""
        name: varied
        agent: {{command: {yaml_list([PY, "-c", "pass"])}}}
        until:
          max_iterations: 5
          same_failure: 3
          command_succeeds: {yaml_list([PY, str(pick)])}
        """)
    result = ralph("run", str(loop), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    prints = [r["fingerprint"] for r in sessions(isolated)]
    assert len(prints) == 5
    assert prints[0] == prints[1] == prints[3] == prints[4] != prints[2]
    end = json_events(result.stdout)[-1]
    assert end["event"] == "run.end" and end["stop_reason"] == "max_iterations"
    assert runs(isolated)[0]["stop_reason"] == "max_iterations"


def test_a_failing_agent_is_the_failure_without_a_check(tmp_path: Path, isolated: Path) -> None:
    agent = "import os, sys; print(f'error: connection refused (pid {os.getpid()})'); sys.exit(3)"
    loop = write_loop(tmp_path, f"""
        name: broken-agent
        agent: {{command: {yaml_list([PY, "-c", agent])}}}
        until: {{max_iterations: 5, same_failure: 2, max_consecutive_failures: 4}}
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(sessions(isolated)) == 2
    assert "agent exit 3: error: connection refused" in result.stdout.splitlines()[-1]
    assert runs(isolated)[0]["stop_reason"] == "same_failure"

    loop = write_loop(tmp_path, f"""
        name: broken-agent
        agent: {{command: {yaml_list([PY, "-c", agent])}}}
        until: {{max_iterations: 5, max_consecutive_failures: 2}}
        """)
    result = ralph("run", str(loop), "--json")
    assert result.returncode == 1
    end = json_events(result.stdout)[-1]
    assert (end["stop_reason"], end["detail"]) == ("max_consecutive_failures", "2 consecutive failed iterations")


# -- evidence over claims, feedback ------------------------------------------------------------


def test_a_claim_counts_only_when_the_check_passes_and_the_next_prompt_says_why(tmp_path: Path,
                                                                                 isolated: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    # The agent always claims; it records its stdin (the prompt) and env. The check fails in
    # iteration 1 with 100 lines of output, passes from iteration 2 on; it records its env too.
    agent = (f"import json, os, sys; p = sys.stdin.read(); "
             f"open(os.path.join({str(dumps)!r}, 'agent-' + os.environ['RALPH_ITERATION']), 'w')"
             f".write(json.dumps({{'prompt': p, 'env': dict(os.environ)}})); print('All done. {PROMISE}')")
    check = (f"import json, os, sys; open(os.path.join({str(dumps)!r}, 'check-' + os.environ['RALPH_ITERATION']),"
             f" 'w').write(json.dumps(dict(os.environ)))\n"
             f"if os.environ['RALPH_ITERATION'] == '1':\n"
             f"    print('\\n'.join(f'line {{i}} of the check' for i in range(100))); sys.exit(1)")
    loop = write_loop(tmp_path, f"""
        name: evidence
        agent:
          command: {yaml_list([PY, "-c", agent])}
          prompt: "Fix the tests.\\n{{feedback}}"
        until:
          max_iterations: 4
          output_contains: "{PROMISE}"
          command_succeeds: {yaml_list([PY, "-c", check])}
        """)
    result = ralph("run", str(loop), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = sessions(isolated)
    assert [r["status"] for r in rows] == ["claim_rejected", "complete"]
    assert json_events(result.stdout)[-1]["stop_reason"] == "complete"

    first = json.loads((dumps / "agent-1").read_text())
    assert first["prompt"] == "Fix the tests.\n"  # {feedback} is empty on the first iteration
    assert first["env"]["RALPH_FEEDBACK"] == "" and first["env"]["RALPH_PREVIOUS_SESSION_ID"] == ""
    second = json.loads((dumps / "agent-2").read_text())
    feedback = second["env"]["RALPH_FEEDBACK"]
    assert second["prompt"] == f"Fix the tests.\n{feedback}"
    assert second["env"]["RALPH_PREVIOUS_SESSION_ID"] == rows[0]["id"]
    assert feedback.startswith(f"The previous iteration ({rows[0]['id']}) claimed completion ('{PROMISE}'), "
                               "but the check")
    tail = feedback.split("Last output of check:\n", 1)[1]
    assert tail.splitlines() == [f"line {i} of the check" for i in range(60, 100)]  # the last 40 lines
    assert len(tail.encode()) <= TAIL_BYTES
    assert rows[1]["feedback"] == feedback and rows[0]["feedback"] is None
    check_env = json.loads((dumps / "check-2").read_text())  # every child of the session gets it
    assert check_env["RALPH_FEEDBACK"] == feedback and check_env["RALPH_PREVIOUS_SESSION_ID"] == rows[0]["id"]


def test_with_both_conditions_a_passing_check_without_a_claim_goes_on(tmp_path: Path, isolated: Path) -> None:
    agent = f"import os; print('{PROMISE}' if os.environ['RALPH_ITERATION'] == '2' else 'still working')"
    loop = write_loop(tmp_path, f"""
        name: both
        agent: {{command: {yaml_list([PY, "-c", agent])}}}
        until:
          max_iterations: 3
          output_contains: "{PROMISE}"
          command_succeeds: {yaml_list([PY, "-c", "pass"])}
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["status"] for r in sessions(isolated)] == ["ok", "complete"]


def test_a_timeout_is_fed_forward(tmp_path: Path, isolated: Path) -> None:
    agent = ("import os, sys, time\n"
             "if os.environ['RALPH_ITERATION'] == '1':\n"
             "    print('thinking', flush=True); time.sleep(60)\n"
             "print(os.environ['RALPH_FEEDBACK'])")
    loop = write_loop(tmp_path, f"""
        name: slow
        agent: {{command: {yaml_list([PY, "-c", agent])}, timeout: 0.5s}}
        until: {{max_iterations: 2}}
        """)
    result = ralph("run", str(loop))
    rows = sessions(isolated)
    assert [r["status"] for r in rows] == ["timeout", "ok"], result.stdout + result.stderr
    assert f"[2 agent] The previous iteration ({rows[0]['id']}): agent timed out" in result.stdout
    assert "[2 agent] thinking" in result.stdout  # the tail of what it printed


# -- an echoed prompt ------------------------------------------------------------------------


def test_an_echoed_prompt_never_completes_the_loop(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, f"""
        name: echo
        agent:
          command: cat
          prompt: |
            Work on the task.
              When it is done, print:
            {PROMISE}
        until: {{max_iterations: 2, output_contains: "{PROMISE}"}}
        """)
    result = ralph("run", str(loop), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    events = json_events(result.stdout)
    assert PROMISE in [e.get("line") for e in events]  # it was printed, as a line of the prompt
    assert [r["status"] for r in sessions(isolated)] == ["ok", "ok"]
    assert events[-1]["stop_reason"] == "max_iterations"


def test_the_verdict_of_an_iteration() -> None:
    from ralph.config import Until
    from ralph.judge import verdict

    both = Until(output_contains=PROMISE, command_succeeds="true")
    claim_only, check_only = Until(output_contains=PROMISE), Until(command_succeeds="true")

    def of(until: Until, claimed: bool, passed: bool | None, agent: str = "ok", ok: bool = True) -> str:
        return verdict(until, cancelled=False, claimed=claimed, check_passed=passed, agent_status=agent, ok=ok)

    assert of(claim_only, True, None) == "complete"
    assert of(check_only, False, True) == "complete"
    assert of(both, True, True) == "complete"
    assert of(both, True, False) == "claim_rejected"
    assert of(both, False, True) == "ok"  # evidence without a claim: not done yet
    assert of(both, False, False, "timeout", False) == "timeout"
    assert of(claim_only, False, None, "failed", False) == "failed"
    assert verdict(both, cancelled=True, claimed=True, check_passed=True, agent_status="ok", ok=True) == "interrupted"
