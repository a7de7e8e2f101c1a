"""Loop judgement: after each iteration, should the loop stop, and why (in a word and in words)?

The runner hands over what happened (``Facts``); the ``Judge`` answers with a ``Stop`` or None.
Every stop has a ``reason`` from the fixed set ``STOP_REASONS`` (the run's ``stop_reason`` in the
history, ``--json`` and on the run span) and ``words`` for the last console line. Failure
fingerprints live here too: a failed iteration's output tail with what changes from run to run
(numbers, hex IDs, durations, timestamps, PIDs, temp paths) normalised away, so ``same_failure``
sees the same error twice as the same, and two different errors as two. ``NoProgress``
(``until.no_progress``) reads the git provenance: N iterations in a row that changed nothing.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ralph.config import Until
from ralph.git import Change

STOP_REASONS = ("complete", "max_iterations", "max_duration", "max_cost", "max_consecutive_failures",
                "no_progress", "same_failure", "interrupted", "taken_over", "error")
# What each stop means for an item: how the batch summary and the exit code see it.
ITEM_STATUS = {"complete": "complete", "max_iterations": "exhausted", "max_duration": "exhausted",
               "interrupted": "interrupted", "taken_over": "lost"}
TAIL_LINES = 40  # of a failure's output: what {feedback} quotes and what a fingerprint is made of
TAIL_BYTES = 4096


@dataclass(frozen=True)
class Stop:
    reason: str  # one of STOP_REASONS
    words: str  # for people: the last console line says it
    ok: bool = False  # the item counts as a success (exit 0)

    @property
    def status(self) -> str:
        return ITEM_STATUS.get(self.reason, "failed")


@dataclass(frozen=True)
class Failure:
    """What made an iteration fail: the check when it ran and failed, else the agent or a step."""

    step: str  # check | agent | a step's name
    status: str  # failed | timeout | error | ...
    exit_code: int | None
    reason: str | None = None  # the process layer's words (a timeout's)
    tail: str = ""  # the last TAIL_LINES lines (at most TAIL_BYTES) of what it printed

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.step, self.tail, self.status)


@dataclass(frozen=True)
class Facts:
    """One finished iteration, as the judge sees it."""

    session_id: str
    status: str  # complete | ok | failed | timeout | claim_rejected | interrupted
    cost: float | None = None
    failure: Failure | None = None
    change: Change | None = None  # what it changed in the git work tree (None: no snapshots)


class Judge:
    """The stop rules of one loop (one batch item): asked before and after every iteration."""

    def __init__(self, until: Until, max_iterations: int, deadline: float | None, done: int = 0,
                 cost: float = 0.0) -> None:
        self.until, self.max_iterations, self.deadline = until, max_iterations, deadline
        self.done, self.cost = done, cost
        self.failures = 0
        self.last_ok = False
        self.same: list[str] = []  # session IDs of the current run of one fingerprint
        self.fingerprint: str | None = None
        self.progress = NoProgress(until.no_progress) if until.no_progress else None

    def before_iteration(self, cancelled: bool) -> Stop | None:
        if cancelled:
            return Stop("interrupted", "interrupted")
        if self.done >= self.max_iterations:
            ok = self.last_ok and not self.until.has_success_condition
            return Stop("max_iterations", f"max_iterations ({self.max_iterations}) reached", ok)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return Stop("max_duration", "max_duration reached")
        return None

    def after_iteration(self, facts: Facts) -> Stop | None:
        self.done += 1
        self.cost += facts.cost or 0.0
        until = self.until
        if facts.status == "interrupted":
            return Stop("interrupted", "interrupted")
        if facts.status == "complete":
            return Stop("complete", "success condition held", True)
        self.last_ok = facts.status == "ok"
        self.failures = 0 if self.last_ok else self.failures + 1
        if self.progress is not None:
            words = self.progress.observe(facts.session_id, facts.change)
            if words is not None:
                return Stop("no_progress", words)
        print_ = self._same_failure(facts)
        if until.same_failure and len(self.same) >= until.same_failure:
            return Stop("same_failure", f"the same failure in {len(self.same)} iterations "
                        f"({', '.join(self.same[:1] + self.same[-1:])}): {print_}")
        if until.max_consecutive_failures and self.failures >= until.max_consecutive_failures:
            return Stop("max_consecutive_failures", f"{self.failures} consecutive failed iterations")
        if until.max_cost_usd is not None and self.cost >= until.max_cost_usd:
            return Stop("max_cost", f"cost ${self.cost:.4f} reached max_cost_usd")
        return None

    def _same_failure(self, facts: Facts) -> str:
        """Count the iterations in a row that failed with one fingerprint; returns its first line."""
        failure = facts.failure
        if failure is None:
            self.same, self.fingerprint = [], None
            return ""
        print_ = failure.fingerprint
        if print_ != self.fingerprint:
            self.same, self.fingerprint = [], print_
        self.same.append(facts.session_id)
        return summary(failure)


def claim_suffices(until: Until, claimed: bool) -> bool:
    """Evidence over claims: with a check too, a claim alone never completes an iteration."""
    return claimed and until.command_succeeds is None


def verdict(until: Until, *, cancelled: bool, claimed: bool, check_passed: bool | None, agent_status: str | None,
            ok: bool) -> str:
    """An iteration's status. ``check_passed`` is None when the check did not run."""
    if cancelled:
        return "interrupted"
    if claim_suffices(until, claimed) or (check_passed and (claimed or until.output_contains is None)):
        return "complete"
    if claimed and check_passed is False:
        return "claim_rejected"
    if agent_status == "timeout":
        return "timeout"
    return "ok" if ok else "failed"


def summary(failure: Failure) -> str:
    """One line saying what failed: the step, and the last non-empty line it printed."""
    last = next((line.strip() for line in reversed(failure.tail.splitlines()) if line.strip()), "")
    what = failure.reason or (f"exit {failure.exit_code}" if failure.exit_code is not None else failure.status)
    return f"{failure.step} {what}" + (f": {last[:200]}" if last else "")


def feedback(facts: Facts, until: Until) -> str:
    """Why an iteration did not complete, for the next one's ``{feedback}`` and ``RALPH_FEEDBACK``."""
    if facts.status in ("complete", "interrupted"):
        return ""
    claim, check = until.output_contains, until.command_succeeds
    check = " ".join(check) if isinstance(check, tuple) else check
    failure = facts.failure
    lines: list[str] = []
    if facts.status == "claim_rejected":
        lines.append(f"The previous iteration ({facts.session_id}) claimed completion ({claim!r}), "
                     f"but the check `{check}` did not pass.")
    elif failure is not None and failure.status == "timeout":
        lines.append(f"The previous iteration ({facts.session_id}): {failure.step} timed out"
                     f" ({failure.reason or 'timeout'}).")
    elif failure is not None:
        lines.append(f"The previous iteration ({facts.session_id}): {failure.step} failed"
                     f" ({failure.reason or f'exit {failure.exit_code}'}).")
    elif claim is not None:
        lines.append(f"The previous iteration ({facts.session_id}) did not say {claim!r}.")
    else:
        lines.append(f"The previous iteration ({facts.session_id}) did not complete.")
    if failure is not None and failure.tail.strip():
        lines.append(f"Last output of {failure.step}:")
        lines.append(failure.tail.rstrip("\n"))
    return "\n".join(lines)


def tail(path: Path | str, lines: int = TAIL_LINES, limit: int = TAIL_BYTES) -> str:
    """The last ``lines`` lines of a log, at most ``limit`` bytes, as env-safe text (no NUL)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read(limit)
    except OSError:
        return ""
    kept = data.split(b"\n")
    if len(data) == limit and size > limit:
        kept = kept[1:]  # the first line is cut: drop it
    if kept and not kept[-1]:
        kept.pop()
    text = b"\n".join(kept[-lines:]).decode("utf-8", "replace").replace("\0", "")
    return _ANSI.sub("", text)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# tempfile's own answer without importing tempfile (random, shutil …) into every run's start-up.
# Only matched in text, never written to.
_TMP = sorted({"/tmp", "/var/tmp", *(p.rstrip("/") for p in [os.environ.get("TMPDIR", "")] if p.strip("/"))},  # noqa: S108
              key=len, reverse=True)
# Order matters: a timestamp holds numbers, a temp path hex, a duration a number.
_NORMALISE = [
    (re.compile("(?:" + "|".join(re.escape(t) for t in _TMP) + r")/[^/\s:'\"]+"), "<tmp>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"), "<time>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<time>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b[a-z]+_[0-9A-Za-z]{12,}\b"), "<id>"),  # ses_…, msg_…, toolu_…
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}\b"), "<hex>"),
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:ns|us|µs|ms|s|secs?|seconds?|m|mins?|minutes?|h|hours?)\b"), "<dur>"),
    (re.compile(r"\b\d+(?:\.\d+)?\b"), "<n>"),
]


def normalise(text: str) -> str:
    """What stays the same when the same failure happens again."""
    out = []
    for line in _ANSI.sub("", text).splitlines():
        for pattern, stand_in in _NORMALISE:
            line = pattern.sub(stand_in, line)
        line = " ".join(line.split())
        if line:
            out.append(line)
    return "\n".join(out)


def fingerprint(step: str, text: str, status: str = "failed") -> str:
    """16 hex digits naming a failure: which step, how it ended, and its normalised output tail."""
    import hashlib  # here: hashlib loads OpenSSL, only worth it once something failed

    body = f"{step}\n{status}\n{normalise(text)}".encode()
    return hashlib.sha256(body).hexdigest()[:16]


@dataclass
class NoProgress:
    limit: int
    streak: list[str] = field(default_factory=list)  # sessions in a row that changed nothing
    last_change: str | None = None  # the newest session that did change something

    def observe(self, session_id: str, change: Change | None) -> str | None:
        """The stop reason once the limit is reached, else None."""
        if change is None or change.changed:
            self.streak.clear()
            if change is not None:
                self.last_change = session_id
            return None
        self.streak.append(session_id)
        if len(self.streak) < self.limit:
            return None
        since = self.last_change or self.streak[0]
        noun = "iteration" if self.limit == 1 else "iterations"
        return f"no progress in {self.limit} {noun}: nothing changed since {since}"
