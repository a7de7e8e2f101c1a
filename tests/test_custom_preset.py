"""The ``custom`` preset: an agent CLI wired in the loop file (``agent.custom``). Here the agent is a
real child process (a Python script printing JSON events); tests/agents/test_custom_gemini.py wires
the real Gemini CLI the same way."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from helpers import PY, ralph, write_loop
from ralph.customspec import parse_pointer, resolve
from ralph.errors import ConfigError
from ralph.loader import load

PROMISE = "<promise>COMPLETE</promise>"
NAMESPACE = uuid.UUID("5f0b8d5e-7c1a-4f3e-9a52-72616c706821")  # ralph/agents/claude.py: fixed forever

# An agent CLI with JSON-lines events: it records its argv and prompt, names its own session
# (or continues the one given with --resume), echoes the prompt as a user event, and replies.
AGENT = r'''
import json, os, sys
args = sys.argv[1:]
attempt = os.environ["RALPH_ATTEMPT"]
if "--prompt-file" in args:
    prompt = open(args[args.index("--prompt-file") + 1]).read()
elif os.environ.get("PROMPT_FROM") == "arg":
    prompt = args[-1]
else:
    prompt = sys.stdin.read()
dump = os.path.join(os.environ["DUMP"], f"{os.environ['RALPH_ITERATION']}-{attempt}.json")
json.dump({"argv": sys.argv, "prompt": prompt, "session": os.environ["OPENCODE_SESSION_ID"]}, open(dump, "w"))
sid = args[args.index("--resume") + 1] if "--resume" in args else "native-" + os.environ["RALPH_ITERATION"]
print("starting up (stderr and plain lines are not events)", file=sys.stderr, flush=True)
print(json.dumps({"kind": "start", "sid": sid}), flush=True)
print(json.dumps({"kind": "msg", "role": "user", "parts": [{"text": prompt}]}), flush=True)
fail = os.environ.get("FAIL_FIRST") == "1" and attempt == "1"
said = "working on it" if fail else "all fixed " + os.environ.get("SAY", "")
print(json.dumps({"kind": "msg", "role": "assistant", "parts": [{"text": said}, {"image": "x"}],
                  "usage": {"in": 100, "out": 20}, "cost": "0.25"}), flush=True)
sys.exit(3 if fail else 0)
'''

JSONL = """
    events: jsonl
    text: {path: "$.parts[*].text", where: {kind: msg, role: assistant}}
    session_id: $.sid
    tokens_in: $.usage.in
    tokens_out: $['usage'].out
    cost_usd: $.cost
"""


def agent_script(tmp_path: Path) -> Path:
    script = tmp_path / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    return script


def custom_loop(tmp_path: Path, custom: str, *agent_keys: str, until: str = f'output_contains: "{PROMISE}"') -> Path:
    extra = "\n  ".join(agent_keys)
    body = "\n".join("    " + line.strip() for line in custom.strip().splitlines())
    path = tmp_path / "loop.yaml"
    path.write_text(
        "name: custom-test\n"
        'title: "Custom #{iteration}"\n'
        "agent:\n"
        "  preset: custom\n"
        f'  prompt: "Iteration {{iteration}}: fix a test; say {PROMISE} when all pass"\n'
        f"  {extra}\n"
        "  custom:\n"
        f"{body}\n"
        "until:\n"
        "  max_iterations: 3\n"
        f"  {until}\n", encoding="utf-8")
    return path


def dumps(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def sessions() -> list[dict]:
    result = ralph("sessions", "--json")
    assert result.returncode == 0, result.stderr
    return sorted(json.loads(result.stdout), key=lambda s: s["iteration"])


def test_jsonl_agent_with_a_prompt_file_pointers_and_a_resumed_retry(tmp_path: Path, isolated: Path) -> None:
    script = agent_script(tmp_path)
    loop = custom_loop(tmp_path, f"""
        prompt: file
        argv: [{PY}, {script}, --model, "{{model}}", --ours, "{{session_id}}", --uuid, "{{session_uuid}}",
               --prompt-file, "{{prompt_file}}"]
        resume_argv: [{PY}, {script}, --resume, "{{agent_session_id}}", --prompt-file, "{{prompt_file}}"]
        {JSONL}
        """, "model: m-1", "args: [--extra]", "retry: {attempts: 2, backoff: 0.1s, max_backoff: 0.1s}")
    result = ralph("run", str(loop), env={"DUMP": str(tmp_path), "FAIL_FIRST": "1", "SAY": PROMISE})
    assert result.returncode == 0, result.stdout + result.stderr

    (row,) = sessions()
    # Attempt 1's echoed prompt names the promise but is no assistant text: only attempt 2 completed.
    assert row["status"] == "complete"
    assert row["agent_session_id"] == "native-1"  # from the events; attempt 2 resumed it
    assert (row["tokens_in"], row["tokens_out"], row["cost_usd"]) == (200, 40, pytest.approx(0.5))
    seen = dumps(tmp_path)
    prompt_file = str(isolated / "logs" / row["run_id"] / row["id"] / "prompt.txt")
    assert seen["1-1"]["argv"] == [str(script), "--model", "m-1", "--ours", row["id"],
                                   "--uuid", str(uuid.uuid5(NAMESPACE, row["id"])), "--prompt-file", prompt_file,
                                   "--extra"]
    assert seen["1-2"]["argv"] == [str(script), "--resume", "native-1", "--prompt-file", prompt_file, "--extra"]
    assert seen["1-1"]["prompt"] == f"Iteration 1: fix a test; say {PROMISE} when all pass"
    assert seen["1-1"]["session"] == row["id"]
    # The console shows the assistant's text and plain lines, not the raw events.
    assert "[1 agent] working on it" in result.stdout and f"[1 agent] all fixed {PROMISE}" in result.stdout
    assert "starting up" in result.stdout and '"kind"' not in result.stdout


@pytest.mark.parametrize("mode", ["stdin", "arg"])
def test_the_prompt_on_stdin_or_as_the_last_argument(tmp_path: Path, isolated: Path, mode: str) -> None:
    script = agent_script(tmp_path)
    loop = custom_loop(tmp_path, f"""
        prompt: {mode}
        argv: [{PY}, {script}]
        {JSONL}
        """)
    result = ralph("run", str(loop), env={"DUMP": str(tmp_path), "PROMPT_FROM": mode, "SAY": PROMISE})
    assert result.returncode == 0, result.stdout + result.stderr
    seen = dumps(tmp_path)["1-1"]
    prompt = f"Iteration 1: fix a test; say {PROMISE} when all pass"
    assert seen["prompt"] == prompt
    assert seen["argv"] == [str(script), prompt] if mode == "arg" else [str(script)]


def test_text_events_count_every_line(tmp_path: Path, isolated: Path) -> None:
    loop = custom_loop(tmp_path, f"""
        argv: [{PY}, -c, "import sys; sys.stdin.read(); print('plain'); print('{PROMISE}')"]
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = sessions()
    assert row["status"] == "complete" and row["agent_session_id"] is None
    assert "[1 agent] plain\n" in result.stdout


def test_a_missing_executable_and_an_unset_model_are_usage_errors(tmp_path: Path, isolated: Path) -> None:
    loop = custom_loop(tmp_path, """
        argv: [./tools/my-agent, --go]
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 2
    assert re.search(r"loop\.yaml:\d+:\d+: agent\.custom\.argv: './tools/my-agent' is not an executable",
                     result.stderr), result.stderr
    loop = custom_loop(tmp_path, f"""
        argv: [{PY}, --model, "{{model}}"]
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 2 and "agent.custom.argv: {model} needs agent.model" in result.stderr
    assert not (isolated / "ralph.db").exists()


BAD = [
    ('argv: [agent, "{prompt}"]', "agent.custom.argv", "unknown placeholder {prompt}"),
    ('argv: [agent, "{agent_session_id}"]', "agent.custom.argv", "unknown placeholder {agent_session_id}"),
    ("prompt: file\nargv: [agent]", "agent.custom.argv", "needs {prompt_file}"),
    ("prompt: pipe\nargv: [agent]", "agent.custom.prompt", "'stdin', 'arg' or 'file'"),
    ("argv: []", "agent.custom.argv", "needs at least the executable"),
    ("events: jsonl\ntext: $.a..b\nargv: [agent]", "agent.custom.text", "is not a pointer"),
    ("events: jsonl\ntext: {path: $.a, where: {'$[': 1}}\nargv: [agent]", "agent.custom.text.where", "not a pointer"),
    ("text: $.message\nargv: [agent]", "agent.custom.text", "set `events: jsonl`"),
    ('events: jsonl\nargv: [agent]\nresume_argv: [agent, "{agent_session_id}"]', "agent.custom.resume_argv",
     "needs a `session_id` pointer"),
    ("argv: [agent]\ncolour: red", "agent.custom.colour", "unknown key"),
    ("events: jsonl\ntool_start: {id: $.id, name: '$.a..b'}\nargv: [agent]", "agent.custom.tool_start.name",
     "is not a pointer"),
    ("events: jsonl\ntool_end: {id: '$[', output: $.out}\nargv: [agent]", "agent.custom.tool_end.id",
     "is not a pointer"),
    ("tool_end: {id: $.id}\nargv: [agent]", "agent.custom.tool_end", "set `events: jsonl`"),
]


@pytest.mark.parametrize(("custom", "key", "phrase"), BAD)
def test_bad_custom_sections_name_the_key_and_its_line(tmp_path: Path, custom: str, key: str, phrase: str) -> None:
    path = custom_loop(tmp_path, custom)
    lines = path.read_text().splitlines()
    leaf = key.rsplit(".", 1)[-1]
    section = lines.index("  custom:")
    expected = next(i for i, line in enumerate(lines, 1) if i > section and f"{leaf}:" in line)
    with pytest.raises(ConfigError) as info:
        load(path)
    rendered = info.value.render()
    assert rendered.startswith(f"{path}:{expected}:"), rendered
    assert f": {key}: " in rendered and phrase in rendered, rendered
    result = ralph("validate", str(path))
    assert result.returncode == 2 and phrase in result.stderr


def test_custom_needs_its_section_and_the_section_needs_custom(tmp_path: Path) -> None:
    path = write_loop(tmp_path, "name: a\nagent: {preset: custom, prompt: hi}\n")
    with pytest.raises(ConfigError, match="needs a `custom:` section"):
        load(path)
    path = write_loop(tmp_path, "name: a\nagent: {preset: claude, prompt: hi, custom: {argv: [x]}}\n")
    with pytest.raises(ConfigError, match="is for `preset: custom`"):
        load(path)


def test_pointers() -> None:
    event = {"message": {"content": [{"type": "text", "text": "a"}, {"type": "tool"}, {"text": "b"}]},
             "odd key": {"n": 3}, "list": [1, 2, 3]}
    assert resolve(event, parse_pointer("$.message.content[*].text")) == ["a", "b"]
    assert resolve(event, parse_pointer("message.content[0].type")) == ["text"]
    assert resolve(event, parse_pointer("$['odd key'].n")) == [3]
    assert resolve(event, parse_pointer("$.list[2]")) == [3]
    assert resolve(event, parse_pointer("$.missing.deeper")) == []
    assert resolve(event, parse_pointer("$")) == [event]
    for bad in ("$.a..b", "$[", "$.list[x]", "a b"):
        with pytest.raises(ValueError):
            parse_pointer(bad)


def test_bin_stands_in_for_argv0(tmp_path: Path, isolated: Path) -> None:
    script = agent_script(tmp_path)
    wrapper = tmp_path / "tools" / "agent"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {PY} {script} --via-wrapper "$@"\n')
    wrapper.chmod(0o755)
    loop = custom_loop(tmp_path, f"""
        argv: [my-agent, --go]
        {JSONL}
        """, "bin: ./tools/agent")
    result = ralph("run", str(loop), env={"DUMP": str(tmp_path), "SAY": PROMISE})
    assert result.returncode == 0, result.stdout + result.stderr
    assert dumps(tmp_path)["1-1"]["argv"] == [str(script), "--via-wrapper", "--go"]


def test_what_the_agent_leaves_running_ends_with_the_attempt(tmp_path: Path, isolated: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    leave = (f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 & "
             f"until [ -s {pidfile} ]; do sleep 0.05; done; echo '{PROMISE}'")
    loop = custom_loop(tmp_path, f"""
        argv: [sh, -c, "{leave}"]
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int(pidfile.read_text())
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        assert stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X"), "the agent's leftover still runs"
    except FileNotFoundError:
        pass  # gone
    (row,) = sessions()
    assert "process(es) the agent left running" in (isolated / "logs" / row["run_id"] / "ralph.jsonl").read_text()


def test_tool_start_and_end_pointers_make_tool_calls() -> None:
    """Gemini CLI's real tool_use / tool_result lines, read through the loop file's pointers."""
    from ralph.agents.codex import _Threads
    from ralph.agents.custom import CustomParser
    from ralph.customspec import CustomAgent
    from tests.agents.test_gemini_preset import TOOL_EVENTS

    custom = CustomAgent.model_validate({
        "events": "jsonl", "argv": ["gemini"],
        "tool_start": {"id": "$.tool_id", "name": "$.tool_name", "input": "$.parameters", "where": {"type": "tool_use"}},
        "tool_end": {"id": "$.tool_id", "output": "$.output", "error": "$.error.message",
                     "where": {"type": "tool_result"}}})
    parser = CustomParser(custom, "ses_1", _Threads())
    for line in TOOL_EVENTS:
        parser.feed(line.encode() + b"\n")
    shell, read, cut = parser.finish()
    assert (shell.call_id, shell.name, shell.ok, shell.output, shell.error) == (
        "run_shell_command__run_shell_command_1796004791451_0", "run_shell_command", True, "RALPH-PROBE {}", None)
    assert json.loads(shell.input or "")["command"] == "python3 probe.py"
    assert (read.name, read.ok, read.error) == ("read_file", False, "File not found: missing.py")
    assert (cut.call_id, cut.ok, cut.error) == ("cut_3", False, "no result")  # never answered

    flagged = CustomAgent.model_validate({  # an error flag rather than a message; no pointers for content
        "events": "jsonl", "argv": ["x"], "tool_start": {"id": "$.id", "name": "$.name", "where": {"type": "use"}},
        "tool_end": {"id": "$.id", "error": "$.is_error", "where": {"type": "done"}}})
    parser = CustomParser(flagged, "ses_1", _Threads())
    for event in ({"type": "use", "id": 7, "name": "bash"}, {"type": "done", "id": 7, "is_error": True},
                  {"type": "use", "id": 8, "name": "bash"}, {"type": "done", "id": 8, "is_error": False}):
        parser.feed(json.dumps(event).encode())
    assert [(c.call_id, c.ok, c.error, c.input, c.output) for c in parser.finish()] == [
        ("7", False, "failed", None, None), ("8", True, None, None, None)]
