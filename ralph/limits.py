"""Usage limits: an agent told it may not go on until some time. The loop pauses (it neither fails
nor counts an iteration), then runs the same iteration again in the same session.

A hit comes from the user's ``agent.usage_limit.pattern`` or from a preset that knows its CLI's own
signals (``StreamParser.limit``). The reset time is read from what the CLI said when it says one;
else ``usage_limit.wait`` applies. Items of a batch share one ``Pauses``: a pause holds every item
using the same preset, since they share one account's limit.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from ralph.interrupt import CancelToken

JITTER = 3.0  # seconds added to a reset: parallel loops do not all knock at the same second


@dataclass(frozen=True)
class LimitHit:
    words: str  # what the CLI said, one line
    resets_at: float | None = None  # epoch seconds, when it said


_EPOCH = re.compile(r"\|\s*(\d{10,13})\b")  # "Claude AI usage limit reached|1736899200"
_IN = re.compile(r"(?:try again|retry|resets?)\s+in\s+((?:\d+(?:\.\d+)?\s*(?:days?|d|hours?|hrs?|h|minutes?|mins?|m|"
                 r"seconds?|secs?|s)\b[\s,and]*)+)", re.I)
_AFTER = re.compile(r"retry[-_ ]after[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.I)
_AT = re.compile(r"(?:resets?|try again)(?:\s+at)?\s+(\d{1,2})(?::(\d{2}))?\s*([ap]\.?m\.?)?(?![\d:])", re.I)
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def retry_after(headers: dict[str, object], now: float | None = None) -> float | None:
    """The reset an HTTP response's ``retry-after-ms`` / ``retry-after`` (seconds or a date) names."""
    now = time.time() if now is None else now
    given = {str(k).lower(): str(v) for k, v in headers.items()}
    with contextlib.suppress(ValueError):
        if "retry-after-ms" in given:
            return now + float(given["retry-after-ms"]) / 1000
        if "retry-after" in given:
            return now + float(given["retry-after"])
    if "retry-after" in given:
        from email.utils import parsedate_to_datetime  # only for a date, which is rare

        with contextlib.suppress(TypeError, ValueError):
            return parsedate_to_datetime(given["retry-after"]).timestamp()
    return None


def reset_time(text: str, now: float | None = None) -> float | None:
    """When a limit message says the limit resets (epoch seconds), or None."""
    now = time.time() if now is None else now
    if match := _EPOCH.search(text):
        value = int(match.group(1))
        return value / 1000 if value > 10**12 else float(value)
    if match := _AFTER.search(text):
        return now + float(match.group(1))
    if match := _IN.search(text):
        seconds = 0.0
        for amount, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", match.group(1), re.I):
            seconds += float(amount) * _UNITS.get(unit[0].lower(), 0.0)
        return now + seconds if seconds else None
    if match := _AT.search(text):
        hour, minute, half = int(match.group(1)), int(match.group(2) or 0), (match.group(3) or "").lower()
        if half.startswith("p") and hour < 12:
            hour += 12
        elif half.startswith("a") and hour == 12:
            hour = 0
        if hour > 23 or minute > 59 or (not half and match.group(2) is None):
            return None
        local = datetime.fromtimestamp(now)
        at = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at.timestamp() <= now - 60:  # a clock time already gone (by more than its rounding): tomorrow's
            at += timedelta(days=1)
        return max(at.timestamp(), now)
    return None


class LimitWatch:
    """The user's ``usage_limit.pattern`` over lines of output that are not the model's words."""

    def __init__(self, pattern: str | None) -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.hit: LimitHit | None = None

    def line(self, text: str) -> None:
        if self.pattern is not None and self.hit is None and self.pattern.search(text):
            self.hit = LimitHit(text.strip()[:300], reset_time(text))


def resume_at(hit: LimitHit, wait: float, deadline: float | None, now: float | None = None) -> float:
    """Epoch seconds to pause until: the reset plus jitter, else ``wait``; never past the deadline
    (a ``time.monotonic()`` value)."""
    import random  # only when a limit was hit

    now = time.time() if now is None else now
    at = (hit.resets_at + random.uniform(0.5, JITTER)) if hit.resets_at is not None else now + wait  # noqa: S311
    if deadline is not None:
        at = min(at, now + max(0.0, deadline - time.monotonic()))
    return max(at, now)


class Pauses:
    """Pauses a run's items share, by agent preset."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def hold(self, key: str, until: float) -> None:
        with self._lock:
            self._until[key] = max(until, self._until.get(key, 0.0))

    def until(self, key: str) -> float:
        with self._lock:
            return self._until.get(key, 0.0)

    def wait(self, key: str, cancel: CancelToken) -> None:
        """Sleep while a pause of ``key`` holds; an interrupt ends the wait at once."""
        while not cancel.cancelled and (left := self.until(key) - time.time()) > 0:
            cancel.wait(left)
