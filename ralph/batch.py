"""Batch items: from the file, a file of lines, or a command's output; filtered by --item and split
into stable shards so N hosts can share one batch without talking to each other.

Every span of a batch run carries ``ralph.batch``: ``$RALPH_BATCH_ID`` when set, else
``<loop>-<UTC date>``, so N cron hosts or CI shards started the same night agree on it with no
coordination and a tracing backend can show the batch whole.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ralph.errors import ConfigError, UsageError
from ralph.hints import control_character
from ralph.loader import LoopSpec, resolve_relative
from ralph.process import shell_argv
from ralph.telemetry import Span, Telemetry

BATCH_ID_ENV = "RALPH_BATCH_ID"


def _lines(text: str, bad: Callable[[int, str], ConfigError]) -> list[str]:
    out = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            char = control_character(line)
            if char is not None:  # it would break the console's [item …] prefix
                raise bad(number, f"a batch item may not contain a control character ({char}): {line!r}")
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
            items = _lines(path.read_text(encoding="utf-8"), lambda n, why: ConfigError(why, path, n))
        except (OSError, UnicodeDecodeError) as exc:
            raise spec.error("batch.items_file", f"cannot read items_file {path}: {exc}") from None
    else:
        assert batch.items_command is not None
        env = {**os.environ, **spec.config.env}
        proc = subprocess.run(shell_argv(batch.items_command), cwd=spec.workdir, env=env, capture_output=True,
                              timeout=600, check=False, start_new_session=True)
        if proc.returncode != 0:
            raise ConfigError(f"items_command exited with {proc.returncode}: "
                              f"{proc.stderr.decode('utf-8', 'replace').strip()[:500]}",
                              spec.path, key="batch.items_command")
        items = _lines(proc.stdout.decode("utf-8", "replace"),
                       lambda n, why: spec.error("batch.items_command", f"line {n} of its output: {why}"))
    seen: set[str] = set()
    unique = [i for i in items if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]
    for item in unique:
        if "\0" in item:
            raise spec.error("batch", "a batch item contains a NUL byte")
    return unique


def _rank_key(item: str) -> tuple[bytes, str]:
    import hashlib  # here: hashlib loads OpenSSL, ~5 ms of every run's start-up for batches only

    return hashlib.sha256(item.encode("utf-8")).digest(), item


def shard_items(items: list[str], index: int, count: int) -> list[str]:
    """The ``index``-th (1-based) of ``count`` shards, in the items' own order.

    The items are ranked by a SHA-256 of each and dealt round-robin, so shards differ in size by at
    most one and every host that sees the same item list computes the same split, with no
    coordination (a plain ``hash % N`` can leave a small batch all on one host)."""
    ranked = sorted(items, key=_rank_key)
    mine = set(ranked[index - 1::count])
    return [i for i in items if i in mine]


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
    unknown = [i for i in only if i not in items]
    if unknown:
        raise UsageError(f"--item {unknown[0]!r} is not an item of this batch")
    if shard is not None:  # of the whole list, so --item cannot move an item to another shard
        items = shard_items(items, *shard)
    if only:
        items = [i for i in items if i in only]
    return list(items)


def batch_id(loop: str, env: Mapping[str, str] | None = None) -> str:
    """What every shard of one batch calls it: ``$RALPH_BATCH_ID``, else the loop and today's UTC date."""
    env = os.environ if env is None else env
    given = (env.get(BATCH_ID_ENV) or "").strip()
    return given or f"{loop}-{datetime.now(UTC).date().isoformat()}"


class TaggedTelemetry(Telemetry):
    """Every span it makes (run, iteration, step) carries ``attributes`` too."""

    def __init__(self, inner: Telemetry, attributes: Mapping[str, Any]) -> None:
        super().__init__()
        self.inner, self.attributes = inner, dict(attributes)
        self.warnings, self.capture_content = inner.warnings, inner.capture_content

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return self.inner.enabled

    def span(self, name: str, attributes: Mapping[str, Any], parent: Span | None = None,
             carrier: Mapping[str, str] | None = None, start: float | None = None, later: bool = False) -> Span:
        return self.inner.span(name, {**self.attributes, **attributes}, parent, carrier, start, later)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def __getattr__(self, name: str) -> Any:  # whatever else the tracer grows
        return getattr(self.inner, name)
