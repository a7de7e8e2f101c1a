"""``ralph init --preset NAME``: a starter loop for each agent preset (loops/ has fuller examples).

Each starter validates as written, reads its prompt from PROMPT.md next to it, and ends on the
promise in the model's own text. Values a user must pick (model, approvals) are filled with a
working default or left as a commented line.
"""

from __future__ import annotations

HEADER = """\
# A ralph loop: each iteration is a new titled session; every child gets OPENCODE_SESSION_ID,
# OPENCODE_SESSION_TITLE, RALPH_ITERATION, TRACEPARENT ... in its environment.
"""

COMMAND = HEADER + """\
name: {name}
title: "{name} #{{iteration}}"
agent:
  preset: command            # or an agent preset: ralph init --preset opencode|claude|codex|gemini|...
  # A stand-in agent: shows its session and the prompt it got (an echoed prompt claims nothing),
  # and says the promise from iteration 2 on.
  command: ["sh", "-c", "echo \\"session $OPENCODE_SESSION_ID: $OPENCODE_SESSION_TITLE\\"; cat;
            [ \\"$RALPH_ITERATION\\" -lt 2 ] || echo '<promise>COMPLETE</promise>'"]
  prompt_file: PROMPT.md     # goes to the command's standard input; {{feedback}}: why the last one did not finish
  timeout: 30m
  idle_timeout: 10m
until:
  max_iterations: 3
  output_contains: "<promise>COMPLETE</promise>"
"""

_AGENT = HEADER + """\
#
# {about}
name: {{name}}
title: "{{name}} #{{{{iteration}}}}"
agent:
  preset: {preset}
{agent}  prompt_file: PROMPT.md     # placeholders such as {{{{iteration}}}} are filled in
  timeout: 30m
  idle_timeout: 10m
until:
  max_iterations: 10
  output_contains: "<promise>COMPLETE</promise>"   # the model's own text, not tool output or the prompt
  max_consecutive_failures: 3
"""

# preset -> (what the header says, the agent keys between `preset:` and `prompt_file:`)
_PRESETS: dict[str, tuple[str, str]] = {
    "opencode": (
        "Needs `opencode` on PATH (npm i -g opencode-ai). opencode's own session is this session (same ID\n"
        "# and title); cost and tokens go to `ralph sessions` and `until.max_cost_usd`.",
        "  model: anthropic/claude-sonnet-4-5   # provider/model as opencode names it\n"),
    "claude": (
        "Needs `claude` on PATH (npm i -g @anthropic-ai/claude-code), logged in or ANTHROPIC_API_KEY set.\n"
        "# Claude's session UUID is derived from this session's ID; a retry resumes it.",
        "  model: sonnet\n"
        "  args: [--permission-mode, acceptEdits]   # nobody answers permission prompts in -p mode\n"),
    "codex": (
        "Needs `codex` on PATH (npm i -g @openai/codex), logged in or OPENAI_API_KEY set. Codex names its\n"
        "# own thread (recorded as agent_session_id); a retry continues it.",
        "  # model: gpt-5-codex\n"
        "  args: [--sandbox, workspace-write]\n"),
    "gemini": (
        "Needs `gemini` on PATH (npm i -g @google/gemini-cli), logged in or GEMINI_API_KEY set. Gemini's\n"
        "# session UUID is derived from this session's ID; a retry resumes it. It runs with --yolo\n"
        "# unless args pick an --approval-mode.",
        "  model: gemini-2.5-pro\n"),
    "qwen": (
        "Needs `qwen` on PATH (npm i -g @qwen-code/qwen-code), and its auth: e.g. OPENAI_API_KEY,\n"
        "# OPENAI_BASE_URL and `--auth-type openai`. Qwen's session UUID is derived from this session's\n"
        "# ID; a retry resumes it. It runs with --yolo unless args pick an --approval-mode.",
        "  model: qwen3-coder-plus\n"
        "  args: [--auth-type, openai]   # qwen exits 0 on an API error: its text says [API Error: ...]\n"),
    "copilot": (
        "Needs `copilot` on PATH (npm i -g @github/copilot), logged in. Copilot's session is bound to\n"
        "# this session; tokens and cost go to `ralph sessions`.",
        "  # model: claude-sonnet-4.5\n"),
    "kilo": (
        "Needs `kilo` on PATH (npm i -g @kilocode/cli), with a provider configured. Kilo (an opencode\n"
        "# fork) reports cost and tokens per step.",
        "  # model: anthropic/claude-sonnet-4-5   # provider/model\n"),
    "pi": (
        "Needs `pi` on PATH (npm i -g @mariozechner/pi-coding-agent), with a provider configured. Pi\n"
        "# reports usage and cost in its events.",
        "  # model: claude-sonnet-4-5\n"),
    "custom": (
        "An agent CLI without a preset, described here. This one wires Claude Code by hand: its\n"
        "# JSON-lines events, where the model's text, its session ID, tokens and cost are.",
        "  custom:\n"
        "    argv: [claude, -p, --output-format, stream-json, --verbose, --session-id, \"{session_uuid}\"]\n"
        "    resume_argv: [claude, -p, --output-format, stream-json, --verbose, --resume, \"{agent_session_id}\"]\n"
        "    prompt: stdin              # stdin | arg (the last argument) | file ({prompt_file} in argv)\n"
        "    events: jsonl              # jsonl | text (every line counts)\n"
        "    text: {path: \"$.message.content[*].text\", where: {type: assistant}}\n"
        "    session_id: {path: $.session_id, where: {type: system}}\n"
        "    tokens_in: {path: $.usage.input_tokens, where: {type: result}}\n"
        "    tokens_out: {path: $.usage.output_tokens, where: {type: result}}\n"
        "    cost_usd: $.total_cost_usd\n"),
}

PRESET_NAMES = ("command", *_PRESETS)


def starter_loop(preset: str, name: str) -> str:
    if preset == "command":
        return COMMAND.format(name=name)
    about, agent = _PRESETS[preset]
    template = _AGENT.format(about=about, preset=preset, agent=agent.replace("{", "{{").replace("}", "}}"))
    return template.format(name=name)
