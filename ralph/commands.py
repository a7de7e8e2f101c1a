"""Plain functions behind ``run``, ``validate``, ``init`` and ``schema``; each returns an exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ralph.errors import UsageError

STARTER_LOOP = """\
# A ralph loop: each iteration is a new titled session; every child gets OPENCODE_SESSION_ID,
# OPENCODE_SESSION_TITLE, RALPH_ITERATION, TRACEPARENT ... in its environment.
name: {name}
title: "{name} #{{iteration}}"
agent:
  preset: command            # or opencode | claude | codex (then drop `command`, maybe set `model`)
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

STARTER_PROMPT = """\
Work on the next item of the task. When everything is done, print <promise>COMPLETE</promise>.
{feedback}
"""


def run(file: Path, max_iterations: int | None, state_dir: Path, quiet: bool, json_out: bool,
        items: tuple[str, ...], shard: str | None, resume: bool) -> int:
    from ralph import batch, loader, runner

    spec = loader.load(file)
    if (items or shard) and spec.config.batch is None:
        raise UsageError("--item and --shard are for loops with a `batch:` section")
    options = runner.RunOptions(state_dir, max_iterations, quiet, json_out, items,
                                batch.parse_shard(shard) if shard else None, resume)
    return runner.run(spec, options)


def validate(file: Path) -> int:
    from ralph import loader

    loader.load(file)
    return 0


def init(directory: Path, name: str, force: bool) -> int:
    from ralph.config import NAME_RE

    if not re.match(NAME_RE, name):
        raise UsageError(f"--name {name!r}: use lowercase letters, digits, '.', '_' and '-'")
    directory.mkdir(parents=True, exist_ok=True)
    loop_file, prompt_file = directory / "ralph.yaml", directory / "PROMPT.md"
    for path in (loop_file, prompt_file):
        if path.exists() and not force:
            raise UsageError(f"{path} exists; use --force to overwrite it")
    loop_file.write_text(STARTER_LOOP.format(name=name), encoding="utf-8")
    prompt_file.write_text(STARTER_PROMPT, encoding="utf-8")
    print(f"wrote {loop_file} and {prompt_file}; try: ralph run {loop_file}")
    return 0


def schema() -> int:
    from ralph.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
