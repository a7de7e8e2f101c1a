"""Batch items: from the file, a file of lines, or a command's output; filtered by --item and split
into stable shards so N hosts can share one batch without talking to each other."""

from __future__ import annotations

import hashlib
import subprocess

from ralph.errors import ConfigError, UsageError
from ralph.loader import LoopSpec, resolve_relative
from ralph.process import shell_argv


def _lines(text: str) -> list[str]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def load_items(spec: LoopSpec) -> list[str]:
    batch = spec.config.batch
    assert batch is not None
    if batch.items is not None:
        items = list(batch.items)
    elif batch.items_file is not None:
        path = resolve_relative(spec, batch.items_file)
        try:
            items = _lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read items_file {path}: {exc}", spec.path, key="batch.items_file") from None
    else:
        assert batch.items_command is not None
        proc = subprocess.run(shell_argv(batch.items_command), cwd=spec.workdir, capture_output=True,
                              timeout=600, check=False)
        if proc.returncode != 0:
            raise ConfigError(f"items_command exited with {proc.returncode}: "
                              f"{proc.stderr.decode('utf-8', 'replace').strip()[:500]}",
                              spec.path, key="batch.items_command")
        items = _lines(proc.stdout.decode("utf-8", "replace"))
    seen: set[str] = set()
    unique = [i for i in items if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]
    for item in unique:
        if "\0" in item:
            raise ConfigError("a batch item contains a NUL byte", spec.path, key="batch")
    return unique


def shard_of(item: str, count: int) -> int:
    """1-based shard of an item: a hash of the item alone, so every host agrees without coordination."""
    digest = hashlib.sha256(item.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes I/N such as 1/4, not {text!r}") from None
    if not 1 <= index <= count:
        raise UsageError(f"--shard {text}: I must be between 1 and N")
    return index, count


def resolve_items(spec: LoopSpec, only: tuple[str, ...], shard: tuple[int, int] | None) -> list[str | None]:
    items = load_items(spec)
    if only:
        unknown = [i for i in only if i not in items]
        if unknown:
            raise UsageError(f"--item {unknown[0]!r} is not an item of this batch")
        items = [i for i in items if i in only]
    if shard is not None:
        items = [i for i in items if shard_of(i, shard[1]) == shard[0]]
    return list(items)
