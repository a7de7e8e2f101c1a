"""Values out of an agent's JSON events, as every preset's parser reads them: events are whatever
the CLI printed, so a field may be missing or of another type, and none of that may fail a run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeGuard

from ralph.agents.base import first_line


def obj(value: Any) -> dict[str, Any]:
    """An object field, or an empty one when it is missing or not an object."""
    return value if isinstance(value, dict) else {}


def number(value: Any) -> TypeGuard[int | float]:
    """A JSON number (``true`` and ``false`` are not: Python's bool is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def int_sum(*values: Any) -> int | None:
    """The sum of the numbers among ``values``, as an int; None when there is none."""
    numbers = [int(v) for v in values if number(v)]
    return sum(numbers) if numbers else None


def tool_line(name: Any, args: Any, *, keys: Sequence[str]) -> str:
    """How a tool call shows on the console: ``→ NAME: WHAT``, WHAT being the first of ``keys``
    whose argument is a non-empty string (a shell command with ``$ `` before it), else the
    arguments as JSON; first lines only. Each preset names its tools' keys, best first."""
    given = obj(args)
    for key in keys:
        if isinstance(given.get(key), str) and given[key]:
            what = ("$ " if key == "command" else "") + first_line(given[key])
            break
    else:
        what = first_line(json.dumps(given, ensure_ascii=False))
    return f"→ {name or 'tool'}: {what}"
