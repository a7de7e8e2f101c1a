"""Hostile input: a fuzzed loader never shows a traceback; titles, items and prompts reach children only
as env values or stdin; env values never reach logs, spans or history; unwritable and full state
folders and a missing workdir get clear one-line errors; state files are 0600 and folders 0700."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from handshake import PY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ROOT, ralph, write_loop, yaml_list
from ralph import loader
from ralph.errors import ConfigError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def loads_or_config_error(path: Path, data: bytes) -> None:
    """The property: a valid spec, or a ConfigError whose every line is PATH:LINE:COL: message."""
    path.write_bytes(data)
    try:
        loader.load(path, cwd=path.parent)
    except ConfigError as exc:
        for line in exc.render().splitlines():
            assert re.match(rf"{re.escape(str(path))}:\d+:\d+: .", line), line


VALID = [
    (ROOT / "loops" / "demo.yaml").read_text(),
    """\
name: fix-tests
title: "Fix failing tests #{iteration} {item} {date}"
workdir: .
env: {LOG_LEVEL: debug, PORT: 8080}
agent:
  preset: command
  command: ./scripts/agent.sh
  prompt: "Fix the next failing test"
  timeout: 30m
  idle_timeout: 10m
  retry: {attempts: 3, backoff: 2s, max_backoff: 1m, on_exit_codes: [75], on_output: ["rate limit"]}
steps:
  before: [{name: sync, run: git pull --ff-only}]
  after:
    - {name: log-session, run: [./scripts/log-session.sh, x], timeout: 1m, continue_on_error: true}
until:
  max_iterations: 10
  max_duration: 2h
  output_contains: "<promise>COMPLETE</promise>"
  command_succeeds: pytest -q
  max_consecutive_failures: 3
  max_cost_usd: 5.0
batch: {items: [api, web, worker], parallel: 3}
""",
]

KEYS = ["name", "title", "workdir", "env", "agent", "preset", "command", "prompt", "prompt_file", "model", "args",
        "timeout", "idle_timeout", "retry", "attempts", "backoff", "steps", "before", "after", "run", "until",
        "max_iterations", "batch", "items", "parallel", "telemetry", "<<", "on_exit_codes"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["30m", "1h30m", "0s", "-1", "opencode", "command", "{iteration}", "{nope}", ".nan",
                              "~", "true", "2024-01-01", "ab\0c", "$(touch pwned)"]))
DOCUMENTS = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5), max_leaves=25)


def test_fuzz_random_bytes(tmp_path: Path) -> None:
    @FUZZ
    @given(st.binary(max_size=400))
    def check(data: bytes) -> None:
        loads_or_config_error(tmp_path / "loop.yaml", data)

    check()


def test_fuzz_yaml_syntax(tmp_path: Path) -> None:
    alphabet = st.sampled_from(list("[]{}:-,&*!|>'\"#%@` \n\t?abcx01.~\\<=$\x85\ufeff"))

    @FUZZ
    @given(st.text(alphabet=alphabet, max_size=200))
    def check(text: str) -> None:
        loads_or_config_error(tmp_path / "loop.yaml", text.encode())

    check()


def test_fuzz_random_documents(tmp_path: Path) -> None:
    @FUZZ
    @given(DOCUMENTS, st.dictionaries(st.sampled_from(KEYS), DOCUMENTS, max_size=6))
    def check(anything: object, top: dict[str, object]) -> None:
        for doc in (anything, {"name": "x", "agent": {"command": "true"}, **top}):
            loads_or_config_error(tmp_path / "loop.yaml", yaml.safe_dump(doc, allow_unicode=True).encode())

    check()


def test_fuzz_mutated_valid_files(tmp_path: Path) -> None:
    @FUZZ
    @given(st.sampled_from(VALID), st.data())
    def check(text: str, data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(1, 4))):
            start = data.draw(st.integers(0, len(text)))
            end = data.draw(st.integers(start, min(len(text), start + 30)))
            text = text[:start] + data.draw(st.text(max_size=12) | st.sampled_from(["\n", "  ", ": ", "- "])) + text[end:]
        loads_or_config_error(tmp_path / "loop.yaml", text.encode("utf-8", "surrogatepass"))

    check()


BASE = 'name: x\nagent: {command: "true"}\n'
NASTY = {
    "an alias inside itself": BASE + "env: &a {A: *a}\n",
    "billion laughs": BASE + "l0: &l0 [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 9)),
    "deep nesting": "a: " + "[" * 3000 + "]" * 3000 + "\n" + BASE,
    "a lone surrogate": BASE + 'title: "\\ud800"\n',
    "a NUL in a title": BASE + 'title: "a\\0b"\n',
    "a NUL in a path": BASE + 'workdir: "a\\0b"\n',
    "a not-a-number timeout": 'name: x\nagent: {command: "true", timeout: .nan}\n',
    "a huge integer": 'name: x\nagent: {command: "true", timeout: ' + "9" * 5000 + "}\n",
    "a python tag": BASE + "x: !!python/object/apply:os.system [touch pwned]\n",
    "a name too long": BASE + 'workdir: "' + "a/" * 3000 + '"\n',
    "two documents": BASE + "---\n" + BASE,
}


@pytest.mark.parametrize("text", NASTY.values(), ids=NASTY.keys())
def test_nasty_files_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(ConfigError) as info:
        loader.load(path)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", info.value.render())
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("target", ["/dev/zero", "folder", "/dev/null"])
def test_things_that_are_not_loop_files(tmp_path: Path, target: str) -> None:
    (tmp_path / "folder").mkdir()
    proc = ralph("validate", target, cwd=tmp_path)
    assert proc.returncode == 2
    assert re.fullmatch(rf"{re.escape(target)}:1:1: .+\n", proc.stderr), proc.stderr


def test_validate_never_shows_a_traceback(tmp_path: Path) -> None:
    for name, text in NASTY.items():
        path = tmp_path / "loop.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        proc = ralph("validate", str(path), cwd=tmp_path)
        assert proc.returncode == 2, name
        assert "Traceback" not in proc.stderr and proc.stderr.startswith(f"{path}:"), (name, proc.stderr)


# -- placeholders and text reach children only as env values or stdin ---------------------------

# Dumps its env and stdin to $DUMP/<step>-<sha of the item>.json.
DUMP = [PY, "-c", (
    "import hashlib, json, os, pathlib, sys\n"
    "e = dict(os.environ); e['__stdin__'] = sys.stdin.read()\n"
    "key = hashlib.sha256(e['RALPH_ITEM'].encode()).hexdigest()[:12]\n"
    "(pathlib.Path(e['DUMP']) / f\"{e['RALPH_STEP']}-{key}.json\").write_text(json.dumps(e))\n"
)]
# An item with a newline or another control character is rejected at its line (tests/test_loader.py).
HOSTILE = ["$(touch pwned-item)", "`touch pwned-tick`", "a'b\"c; touch pwned-semi", "line one\\nline two\u2028",
           "ünïcødé ✓ 🎉", "${HOME} $((1+1)) \\n %s {loop}", "-rf --help", "$'\\x41'"]


def test_hostile_text_reaches_children_verbatim_and_never_as_shell(tmp_path: Path, isolated: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    title = "$(touch pwned-title) `touch pwned-title2` \"q' ünï {item} #{iteration}\nsecond line"
    prompt = "Do it: $(touch pwned-prompt) `id` '\"; rm -rf / ; {item} {loop} \\ ✓"
    loop = write_loop(tmp_path, f"""
        name: hostile
        workdir: work
        title: {json.dumps(title)}
        env: {{DUMP: "{dump}"}}
        agent:
          command: {yaml_list(DUMP)}
          prompt: {json.dumps(prompt)}
        steps:
          before: [{{name: shell-step, run: 'printf "%s" "$OPENCODE_SESSION_TITLE" > /dev/null'}}]
          after: [{{name: dump-after, run: {yaml_list(DUMP)}}}]
        until: {{max_iterations: 1, command_succeeds: 'test -n "$RALPH_ITEM$RALPH_SESSION_TITLE"'}}
        batch: {{items: {json.dumps(HOSTILE)}, parallel: 4}}
        """)
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for folder in (tmp_path, work, isolated):
        assert not [p for p in folder.rglob("pwned*")], "a title, item or prompt ran as shell text"
    for item in HOSTILE:
        key = hashlib.sha256(item.encode()).hexdigest()[:12]
        agent = json.loads((dump / f"agent-{key}.json").read_text())
        after = json.loads((dump / f"dump-after-{key}.json").read_text())
        # One pass: a placeholder inside an item stays as written.
        want_title = title.replace("{iteration}", "1").replace("{item}", item)
        for env in (agent, after):
            assert env["RALPH_ITEM"] == item
            assert env["OPENCODE_SESSION_TITLE"] == env["RALPH_SESSION_TITLE"] == want_title
        assert agent["__stdin__"] == prompt.replace("{loop}", "hostile").replace("{item}", item)


def test_hostile_items_from_a_command_stay_data(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    loop = write_loop(tmp_path, f"""
        name: listed
        env: {{DUMP: "{dump}"}}
        agent: {{command: {yaml_list(DUMP)}}}
        until: {{max_iterations: 1}}
        batch: {{items_command: "printf '%s\\\\n' '$(touch pwned)' '`touch pwned2`'"}}
        """)
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("pwned*"))
    items = sorted(json.loads(p.read_text())["RALPH_ITEM"] for p in dump.glob("agent-*.json"))
    assert items == sorted(["$(touch pwned)", "`touch pwned2`"])


# -- env values stay out of logs, spans and history ---------------------------------------------

def test_env_values_never_reach_logs_spans_or_history(tmp_path: Path, isolated: Path) -> None:
    loop_secret = "sk-live-LOOPSECRET-7f3a9c"
    inherited_secret = "ghp_INHERITEDSECRET_42b8e1"
    dump = tmp_path / "dump"
    dump.mkdir()
    loop = write_loop(tmp_path, f"""
        name: secretive
        env: {{API_TOKEN: "{loop_secret}", DUMP: "{dump}"}}
        agent:
          command: {yaml_list(DUMP)}
          prompt: "use the token from the env"
          retry: {{attempts: 2, backoff: 10ms}}
        steps:
          before: [{{name: prep, run: 'test -n "$API_TOKEN" && test -n "$GITHUB_TOKEN"'}}]
          after: [{{name: post, run: ["/bin/sh", "-c", "exit 1"], continue_on_error: true}}]
        until: {{max_iterations: 2, command_succeeds: 'test -z "$GITHUB_TOKEN"'}}
        """)
    proc = ralph("run", str(loop), "--json", cwd=tmp_path, env={"GITHUB_TOKEN": inherited_secret})
    assert proc.returncode == 1, proc.stderr
    # The children did get both values ...
    seen = json.loads(next(dump.glob("agent-*.json")).read_text())
    assert (seen["API_TOKEN"], seen["GITHUB_TOKEN"]) == (loop_secret, inherited_secret)
    # ... and no file ralph wrote holds either (what the children print is theirs: the step logs).
    for path in isolated.rglob("*"):
        if path.is_file() and not (path.suffix == ".log" and path.parent.parent.parent.name == "logs"):
            data = path.read_bytes()
            assert loop_secret.encode() not in data and inherited_secret.encode() not in data, path
    assert loop_secret not in proc.stdout + proc.stderr
    assert inherited_secret not in proc.stdout + proc.stderr


# -- state folders that cannot be used -----------------------------------------------------------

@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def quick_loop(tmp_path: Path, code: str = "print('hello')") -> Path:
    return write_loop(tmp_path, f"""
        name: quick
        agent: {{command: {yaml_list([PY, "-c", code])}}}
        until: {{max_iterations: 3}}
        """)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr and "--- Logging error ---" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ralph: "), proc.stderr
    return lines[0]


def test_a_state_folder_that_cannot_be_written(tmp_path: Path) -> None:
    loop = quick_loop(tmp_path)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        context: contextlib.AbstractContextManager[Path] = contextlib.nullcontext(ro)
    else:
        context = tmpfs(tmp_path / "ro", "ro,size=64k")
    with context as ro:
        for state in (ro, ro / ".ralph"):
            proc = ralph("run", str(loop), "--state-dir", str(state), cwd=tmp_path)
            assert proc.returncode == 1
            line = one_line_error(proc)
            assert str(state) in line and "state folder" in line


def test_a_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    loop = quick_loop(tmp_path, "import sys; sys.stdout.write('x' * 400000)")
    with tmpfs(tmp_path / "full", "size=256k,mode=0700") as state:
        proc = ralph("run", str(loop), "--state-dir", str(state), cwd=tmp_path)
        assert proc.returncode == 1
        line = one_line_error(proc)
        assert "disk is full" in line or "No space left on device" in line, line
        # What could be written is still readable.
        listing = ralph("sessions", "--state-dir", str(state), "--json", cwd=tmp_path)
        assert "Traceback" not in listing.stderr


def test_a_missing_workdir_is_a_config_error(tmp_path: Path) -> None:
    loop = write_loop(tmp_path, """
        name: nowhere
        workdir: gone
        agent: {command: "true"}
        """)
    proc = ralph("validate", str(loop), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"{loop}:2:1: workdir: the folder {tmp_path / 'gone'} does not exist\n"


def test_a_workdir_that_vanishes_ends_the_run_with_one_clear_error(tmp_path: Path, isolated: Path) -> None:
    (tmp_path / "work").mkdir()
    loop = write_loop(tmp_path, """
        name: vanish
        workdir: work
        agent: {command: "echo working; rm -rf ../work"}
        until: {max_iterations: 5}
        """)
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 1
    assert f"the working folder {tmp_path / 'work'} no longer exists (exit 1)" in proc.stdout


def test_state_files_are_private(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, f"""
        name: private
        agent: {{command: {yaml_list([PY, "-c", "print('hi')"])}, retry: {{attempts: 2, backoff: 10ms}}}}
        steps: {{after: [{{name: fail, run: "exit 3", continue_on_error: true}}]}}
        until: {{max_iterations: 2}}
        batch: {{items: [a, b], parallel: 2}}
        """)
    assert ralph("run", str(loop), cwd=tmp_path).returncode == 0
    found = list(isolated.rglob("*"))
    assert len(found) > 8
    for path in [isolated, *found]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
