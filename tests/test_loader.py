"""Bad loop files: PATH:LINE:COL: key: message on stderr, exit 2, nothing run and nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ralph, write_loop
from ralph.errors import ConfigError
from ralph.loader import load

GOOD = """
name: ok
agent: {command: "true"}
"""

# (file text, expected line, expected key, a phrase of the message)
BAD = [
    ("name: Bad Name\nagent: {command: x}\n", 1, "name", "match"),
    ("name: a\nname: b\nagent: {command: x}\n", 2, "name", "duplicate key"),
    ("name: a\nagent:\n  command: x\n  colour: red\n", 4, "agent.colour", "unknown key"),
    ("name: a\nagent: {command: x}\nuntil:\n  max_iterations: ten\n", 4, "until.max_iterations", "integer"),
    ("name: a\nagent:\n  command: x\n  timeout: 5 minutes\n", 4, "agent.timeout", "invalid duration"),
    ("name: a\nagent:\n  command: x\n  timeout: -3s\n", 4, "agent.timeout", "duration"),
    ("name: a\ntitle: 'Fix {thing} #{iteration}'\nagent: {command: x}\n", 2, "title", "unknown placeholder {thing}"),
    ("name: a\nenv:\n  LOG: x\n  OPENCODE_SESSION_ID: x\nagent: {command: x}\n", 4, "env.OPENCODE_SESSION_ID",
     "set by ralph"),
    ("name: a\nenv:\n  TRACEPARENT: x\nagent: {command: x}\n", 3, "env.TRACEPARENT", "set by ralph"),
    ("name: a\nagent:\n  command: x\n  prompt_file: nope.md\n", 4, "agent.prompt_file", "nope.md"),
    ("name: a\nagent: !!python/object/apply:os.system ['touch pwned']\n", 2, "agent", "tags"),
    ("name: a\nagent: !custom {command: x}\n", 2, "agent", "tags"),
    ("name: a\nagent: {command: x}\nsteps:\n  after:\n    - {name: agent, run: x}\n", 5, "steps.after[0].name",
     "built-in"),
    ("name: a\nagent: {command: x}\nsteps:\n  before:\n    - {name: s, rnu: x}\n", 5, "steps.before[0].rnu",
     "unknown key"),
    ("name: a\nagent: {preset: gpt}\n", 2, "agent.preset", "'command'"),
    ("name: a\nagent: {prompt: hi}\n", 2, "agent", "needs `command`"),
    ("name: a\nworkdir: does/not/exist\nagent: {command: x}\n", 2, "workdir", "does not exist"),
    ("name: a\nagent: {command: x}\nbatch: {parallel: 2}\n", 3, "batch", "exactly one of"),
    ("name: a\nagent: [\n", 3, None, "invalid YAML"),
    ("- just\n- a list\n", 1, None, "mapping"),
    ("", 1, None, "empty"),
    ("name: a\n", 1, "agent", "required"),
    # Loop judgement and the newcomer's niceties.
    ("name: a\nagent:\n  comand: x\n", 3, "agent.comand", 'unknown key (did you mean "command"?)'),
    ("name: a\nagent: {command: x}\nuntil: {max_iteratons: 3}\n", 3, "until.max_iteratons",
     'did you mean "max_iterations"?'),
    ("name: a\nagent: {command: x}\nsteps:\n  after:\n    - {name: s, rnu: x}\n", 5, "steps.after[0].rnu",
     'did you mean "run"?'),
    ("name: a\nagent:\n  command: true\n", 3, "agent.command", "a YAML boolean (true/false, yes/no, on/off) "
     "where text is expected: put the value in quotes"),
    ("name: a\nagent:\n  command: x\n  prompt: yes\n", 4, "agent.prompt", "put the value in quotes"),
    ("name: a\nagent: {command: x}\nbatch:\n  items:\n    - api\n    - \"web\\nworker\"\n", 6, "batch.items[1]",
     "may not contain a control character (\\n)"),
    ("name: a\nagent: {command: x}\nuntil: {same_failure: 0}\n", 3, "until.same_failure", "greater than"),
    ("name: a\nagent:\n  command: x\n  usage_limit: {pattern: 'limit (', wait: 1m}\n", 4,
     "agent.usage_limit.pattern", "not a valid regular expression"),
    ("name: a\nagent:\n  command: x\n  usage_limit: {wait: soon}\n", 4, "agent.usage_limit.wait", "duration"),
    ("name: a\ntitle: 'Fix #{iteration} {feedback}'\nagent: {command: x}\n", 2, "title",
     "{feedback} is for prompts, not titles"),
    ("name: a\nenv: {RALPH_FEEDBACK: x}\nagent: {command: x}\n", 2, "env.RALPH_FEEDBACK", "set by ralph"),
]


@pytest.mark.parametrize(("text", "line", "key", "phrase"), BAD)
def test_bad_file_is_reported_with_its_line_and_key(tmp_path: Path, text: str, line: int, key: str | None,
                                                    phrase: str) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    rendered = info.value.render()
    first = rendered.splitlines()[0]
    assert first.startswith(f"{path}:{line}:"), rendered
    if key:
        assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: {re.escape(key)}: ", rendered, re.M), rendered
    assert phrase in rendered


def test_non_utf8_names_the_byte_position(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_bytes(b"name: a\nagent:\n  command: \"\xff\"\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.render() == f"{path}:3:13: the file is not valid UTF-8"


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write_loop(tmp_path, """
        name: BAD
        agent:
          command: x
          timeout: soon
        until: {max_iterations: 0}
    """)
    with pytest.raises(ConfigError) as info:
        load(path)
    lines = info.value.render().splitlines()
    assert [ln.split(": ")[1] for ln in lines] == ["name", "agent.timeout", "until.max_iterations"]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_rejects_bad_file_with_exit_2_and_writes_nothing(tmp_path: Path, isolated: Path, command: str) -> None:
    marker = tmp_path / "ran"
    path = write_loop(tmp_path, f"""
        name: a
        agent:
          command: touch {marker}
          timeout: forever
    """)
    result = ralph(command, str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}:4:3: agent.timeout: invalid duration 'forever'; use e.g. 90s, 30m, 2h or 1h30m"
    assert result.stdout == ""
    assert not marker.exists()
    assert not isolated.exists()  # no state folder, no history, no logs


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = ralph("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "no such file" in result.stderr


def test_every_contract_key_parses_into_frozen_records(tmp_path: Path) -> None:
    (tmp_path / "PROMPT.md").write_text("Fix {item} in {loop} #{iteration} {unknown} {{x}}", encoding="utf-8")
    (tmp_path / "items.txt").write_text("api\n# comment\nweb\n", encoding="utf-8")
    path = write_loop(tmp_path, """
        name: fix-tests
        title: "Fix failing tests #{iteration}"
        workdir: .
        env: {LOG_LEVEL: debug, PORT: 8080, VERBOSE: true}
        agent:
          preset: command
          command: ["./scripts/agent.sh", "--fast"]
          prompt_file: PROMPT.md
          args: ["-v"]
          timeout: 30m
          idle_timeout: 1h30m
          retry: {attempts: 3, backoff: 2s, max_backoff: 1m, on_exit_codes: [75], on_output: ["rate limit"]}
          usage_limit: {pattern: "usage limit reached", wait: 1h}
        steps:
          before: [{name: sync, run: git pull --ff-only}]
          after:
            - {name: log-session, run: ./scripts/log-session.sh, timeout: 1m, continue_on_error: true}
        until:
          max_iterations: 10
          max_duration: 2h
          output_contains: "<promise>COMPLETE</promise>"
          command_succeeds: pytest -q
          max_consecutive_failures: 3
          max_cost_usd: 5.0
          same_failure: 3
        batch:
          items_file: items.txt
          parallel: 3
    """)
    spec = load(path)
    c = spec.config
    assert c.env == {"LOG_LEVEL": "debug", "PORT": "8080", "VERBOSE": "true"}
    assert c.agent.command == ("./scripts/agent.sh", "--fast")
    assert (c.agent.timeout, c.agent.idle_timeout) == (1800.0, 5400.0)
    assert c.agent.retry.on_exit_codes == (75,) and c.agent.retry.max_backoff == 60.0
    assert c.steps.after[0].continue_on_error is True and c.steps.after[0].timeout == 60.0
    assert c.until.max_duration == 7200.0 and c.until.max_cost_usd == 5.0 and c.until.same_failure == 3
    assert (c.agent.usage_limit.pattern, c.agent.usage_limit.wait) == ("usage limit reached", 3600.0)
    assert c.batch is not None and c.batch.parallel == 3
    assert spec.prompt == "Fix {item} in {loop} #{iteration} {unknown} {{x}}"
    assert spec.workdir == tmp_path.resolve()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        c.agent.timeout = 1  # type: ignore[misc]


def test_a_boolean_where_text_is_meant_is_one_line(tmp_path: Path) -> None:
    path = write_loop(tmp_path, "name: a\nagent:\n  command: true\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.render().count("\n") == 0  # not one line per type of the union


def test_control_characters_in_batch_items_are_rejected_at_their_line(tmp_path: Path, isolated: Path) -> None:
    (tmp_path / "items.txt").write_text("api\n# a comment\nweb\x1b[31m\nworker\r\n", encoding="utf-8")
    path = write_loop(tmp_path, "name: a\nagent: {command: x}\nbatch: {items_file: items.txt}\n")
    result = ralph("run", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"{tmp_path / 'items.txt'}:3:1: a batch item may not contain a control "
                                    "character (\\x1b): 'web\\x1b[31m'")
    assert "\x1b" not in result.stderr  # shown escaped, never sent to the terminal
    assert not (isolated / "ralph.db").exists()

    path = write_loop(tmp_path, "name: a\nagent: {command: x}\nbatch:\n  items_command: printf 'a\\tb\\n'\n")
    result = ralph("run", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:4:3: batch.items_command: line 1 of its output: a batch item may not contain a control " \
           "character (\\t)" in result.stderr


def test_workdir_defaults_to_the_current_folder(tmp_path: Path) -> None:
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    path = write_loop(tmp_path / "loops", GOOD)
    assert load(path, cwd=sub).workdir == sub.resolve()


def test_missing_agent_binary_names_the_key_line_and_writes_nothing(tmp_path: Path, isolated: Path) -> None:
    path = write_loop(tmp_path, """
        name: a
        agent:
          preset: codex
          bin: ./no/such/codex
          prompt: hi
    """)
    result = ralph("run", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}:4:3: agent.bin: './no/such/codex' is not an executable file"
    assert not isolated.exists()
