"""Sessions: IDs in opencode's shape, titles from templates, and the env every child gets."""

from __future__ import annotations

import os
import random
import re
import string
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date as _date
from pathlib import Path

from ralph.config import PLACEHOLDER_RE, PLACEHOLDERS

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
SESSION_ID_RE = re.compile(r"^ses_[0-9a-f]{12}[0-9A-Za-z]{14}$")
_lock = threading.Lock()
_last = [0, 0]  # last timestamp (ms), counter: keeps IDs minted in one millisecond distinct and ordered
_random = random.Random()  # noqa: S311 - labels, not secrets; seeded from os.urandom, one GIL-held call a draw


def _new_id(prefix: str) -> str:
    """``prefix_`` + 12 hex (48 bits of ms*4096+counter, as opencode does) + 14 random base62."""
    with _lock:
        now = int(time.time() * 1000)
        if now != _last[0]:
            _last[0], _last[1] = now, 0
        _last[1] += 1
        value = (now * 0x1000 + _last[1]) & 0xFFFF_FFFF_FFFF
    # 128 random bits per ID (not a draw per character); 62**14 < 2**88 and the modulo bias is
    # negligible. From a generator seeded by the OS, not os.urandom each time: that system call lets
    # go of the GIL, and in a wide batch each such hand-off costs more than the call.
    rest = _random.getrandbits(128)
    chars = []
    for _ in range(14):
        rest, digit = divmod(rest, 62)
        chars.append(_BASE62[digit])
    tail = "".join(chars)
    return f"{prefix}_{value:012x}{tail}"


def new_session_id() -> str:
    return _new_id("ses")


def new_run_id() -> str:
    return _new_id("run")


def render(template: str, values: Mapping[str, object]) -> str:
    """Replace only the known placeholders; every other brace stays as written."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(values[name]) if name in PLACEHOLDERS and name in values else match.group(0)

    return PLACEHOLDER_RE.sub(sub, template)


def placeholder_values(loop: str, iteration: int, item: str | None, run_id: str,
                       feedback: str = "") -> dict[str, object]:
    return {"loop": loop, "iteration": iteration, "item": item or "", "run_id": run_id,
            "date": _date.today().isoformat(), "feedback": feedback}


@dataclass(frozen=True)
class Session:
    """Who a child is running for. ``id`` is empty when no session could be found (ralph exec)."""

    id: str
    title: str
    run_id: str
    loop: str
    iteration: int
    item: str | None
    state_dir: Path
    previous_id: str | None = None
    feedback: str = ""  # why the previous iteration did not complete

    def env(self, step: str, attempt: int = 1) -> dict[str, str]:
        return {
            "OPENCODE_SESSION_ID": self.id,
            "RALPH_SESSION_ID": self.id,
            "OPENCODE_SESSION_TITLE": self.title,
            "RALPH_SESSION_TITLE": self.title,
            "RALPH_RUN_ID": self.run_id,
            "RALPH_LOOP": self.loop,
            "RALPH_ITERATION": str(self.iteration) if self.iteration else "",
            "RALPH_ATTEMPT": str(attempt),
            "RALPH_STEP": step,
            "RALPH_ITEM": self.item or "",
            "RALPH_STATE_DIR": str(self.state_dir),
            "RALPH_PREVIOUS_SESSION_ID": self.previous_id or "",
            "RALPH_FEEDBACK": self.feedback,
        }

    def with_id(self, session_id: str) -> Session:
        return replace(self, id=session_id)


def resource_attributes(inherited: str | None, session_id: str) -> str:
    """``OTEL_RESOURCE_ATTRIBUTES`` as inherited, with ``session.id`` set (ours replaces theirs)."""
    parts = [p for p in (inherited or "").split(",") if p.strip() and not p.strip().startswith("session.id=")]
    if session_id:
        parts.append(f"session.id={session_id}")
    return ",".join(parts)


def child_env(
    session: Session,
    step: str,
    attempt: int = 1,
    loop_env: Mapping[str, str] | None = None,
    trace: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The complete env of one spawn, built as a new dict: inherited, then the loop's, then ours."""
    env = dict(os.environ if base is None else base)
    env.update(loop_env or {})
    # An inherited trace context belongs to our parent; the child gets its own step's (or none).
    env.pop("TRACEPARENT", None)
    env.pop("TRACESTATE", None)
    env.update(session.env(step, attempt))
    env["OTEL_RESOURCE_ATTRIBUTES"] = resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES"), session.id)
    env.update(trace or {})
    return env
