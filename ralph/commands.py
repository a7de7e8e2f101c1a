"""Plain functions behind ``run``, ``validate``, ``init`` and ``schema``; each returns an exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ralph.errors import UsageError

STARTER_PROMPT = """\
Work on the next item of the task. When everything is done, print <promise>COMPLETE</promise>.
{feedback}
"""


def run(file: Path, max_iterations: int | None, state_dir: Path, quiet: bool, json_out: bool,
        items: tuple[str, ...], shard: str | None, resume: bool, report: Path | None = None) -> int:
    from ralph import batch, loader, runner

    spec = loader.load(file)
    if (items or shard) and spec.config.batch is None:
        raise UsageError("--item and --shard are for loops with a `batch:` section")
    if report is not None and not report.resolve().parent.is_dir():
        raise UsageError(f"--report {report}: the folder {report.resolve().parent} does not exist")
    options = runner.RunOptions(state_dir, max_iterations, quiet, json_out, items,
                                batch.parse_shard(shard) if shard else None, resume, report)
    return runner.run(spec, options)


def validate(file: Path) -> int:
    from ralph import loader

    loader.load(file)
    return 0


def init(directory: Path, name: str, force: bool, preset: str = "command") -> int:
    from ralph.config import NAME_RE
    from ralph.starters import PRESET_NAMES, starter_loop

    if not re.match(NAME_RE, name):
        raise UsageError(f"--name {name!r}: use lowercase letters, digits, '.', '_' and '-'")
    if preset not in PRESET_NAMES:
        raise UsageError(f"--preset {preset!r}: choose one of {', '.join(PRESET_NAMES)}")
    directory.mkdir(parents=True, exist_ok=True)
    loop_file, prompt_file = directory / "ralph.yaml", directory / "PROMPT.md"
    for path in (loop_file, prompt_file):
        if path.exists() and not force:
            raise UsageError(f"{path} exists; use --force to overwrite it")
    loop_file.write_text(starter_loop(preset, name), encoding="utf-8")
    prompt_file.write_text(STARTER_PROMPT, encoding="utf-8")
    print(f"wrote {loop_file} and {prompt_file}; try: ralph run {loop_file}")
    return 0


def schema() -> int:
    from ralph.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
