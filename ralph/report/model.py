"""The report's data: plain frozen records gathered from one or more histories, which every renderer
(HTML, Markdown, JSON) reads and none of them queries further."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Changes(Record):
    """What a session changed, where git provenance recorded it (issue 12's columns)."""

    files_changed: int | None = None
    insertions: int | None = None
    deletions: int | None = None
    files: list[str] = []
    commits: list[str] = []
    git_before: str | None = None
    git_after: str | None = None


class Step(Record):
    name: str
    kind: str
    attempt: int
    status: str
    exit_code: int | None
    started: float
    ended: float | None
    duration: float | None
    log: str | None  # the log file, as found on this machine (absolute)
    reason: str | None = None


class Session(Record):
    id: str
    run_id: str
    title: str
    item: str | None
    iteration: int
    status: str
    started: float
    ended: float | None
    duration: float | None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    trace_id: str | None = None
    agent_session_id: str | None = None
    reason: str | None = None
    feedback: str | None = None
    fingerprint: str | None = None
    changes: Changes | None = None
    steps: list[Step] = []
    log_tail: str | None = None  # the end of the failed step's log
    failed_step: str | None = None


class Run(Record):
    id: str
    loop: str
    status: str
    exit_code: int | None
    stop_reason: str | None  # the history's stop_reason, else what the run's log said at its end
    started: float
    ended: float | None
    host: str | None
    shard: str | None
    batch: str | None
    trace_id: str | None
    state_dir: str


class Item(Record):
    """One batch item (or the run itself outside a batch) over every run that worked on it."""

    item: str | None
    run_id: str
    status: str
    succeeded: bool | None  # None while it still runs
    iterations: int
    cost_usd: float | None
    tokens: int | None
    stop_reason: str | None
    changed_lines: int | None
    sessions: list[str]


class Totals(Record):
    outcome: str
    stop_reason: str | None
    exit_code: int | None
    started: float | None
    ended: float | None
    wall: float | None
    iterations: int
    tokens_in: int | None  # None: no session recorded any
    tokens_out: int | None
    cost_usd: float | None
    items: int
    items_failed: int
    insertions: int | None
    deletions: int | None
    files_changed: int | None
    running: bool


class IterationPoint(Record):
    """One iteration number, summed over the items: what the chart draws."""

    iteration: int
    sessions: int
    cost_usd: float
    tokens: int
    changed_lines: int | None


class Report(Record):
    kind: str  # batch | run
    ident: str
    loop: str
    title: str
    generated: float
    state_dirs: list[str]
    totals: Totals
    runs: list[Run]
    items: list[Item]
    sessions: list[Session]
    iterations: list[IterationPoint]
    has_git: bool
