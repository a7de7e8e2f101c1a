"""From one or more state folders' histories to the report's records: which runs (a run, a batch, or
the newest of either), their sessions and steps, each item's end, the tails of failed logs.

Reads only. Columns that later schema versions add (git provenance, stop reasons, fingerprints) are
read when a history has them and left out when it does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ralph.errors import StateError, UsageError
from ralph.report import model
from ralph.store import Store, database_url

TAIL_BYTES = 2048
TAIL_LINES = 20
NOT_FAILED = ("ok", "complete", "running")


def gather(state_dirs: list[Path], ident: str | None = None) -> model.Report:
    """The report of run or batch ``ident`` (a run ID or unique prefix, or a batch ID), else of the
    newest run, or of its whole batch when it belongs to one, over every given state folder."""
    dirs = _unique(state_dirs)
    shared = database_url() is not None  # one history for every host: open it once, find logs in any folder
    stores = [Store(dirs[0], create=False)] if shared else [Store(d, create=False) for d in dirs]
    try:
        for store in stores:  # a run whose ralph died on this host is not shown as running forever
            with contextlib.suppress(StateError):
                store.mark_abandoned()
        kind, key, picked = _select(stores, ident)
        runs, sessions, ends = [], [], {}
        for store, row in picked:
            home = _home(dirs, row["id"]) if shared else dirs[stores.index(store)]
            records = _run_log(home, row["id"])
            runs.append(_run(home, row, records))
            sessions += _sessions(store, home, row["id"])
            ends.update({(e.run_id, e.item): e for e in _item_ends(row["id"], records)})
    finally:
        for store in stores:
            store.close()
    runs.sort(key=lambda r: r.started)
    sessions.sort(key=lambda s: (s.started, s.iteration))
    items = _items(runs, sessions, ends)
    loop = runs[0].loop if runs else ""
    title = f"{loop}: batch {key}" if kind == "batch" else f"{loop}: run {key}"
    if kind == "run" and runs[0].batch:  # one shard of a batch: still a table of its items
        kind, title = "batch", f"{title} (batch {runs[0].batch})"
    return model.Report(kind=kind, ident=key, loop=loop, title=title, generated=time.time(),
                        state_dirs=[str(s) for s in _unique(state_dirs)], totals=_totals(runs, items, sessions),
                        runs=runs, items=items, sessions=sessions, iterations=_points(sessions),
                        has_git=any(s.changes is not None for s in sessions))


def _home(dirs: list[Path], run_id: str) -> Path:
    """The state folder (of those given) holding a run's logs: with a shared history, its host's."""
    return next((d for d in dirs if (d / "logs" / run_id).is_dir()), dirs[0])


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    for p in paths:
        seen.setdefault(p.resolve(), None)
    return list(seen)


def _select(stores: list[Store], ident: str | None) -> tuple[str, str, list[tuple[Store, dict[str, Any]]]]:
    if ident is not None:
        found = [(s, row) for s in stores if (row := s.find_run(ident)) is not None]
        if len({row["id"] for _, row in found}) > 1:
            raise UsageError(f"{ident!r} matches runs in more than one state folder; give more of the ID")
        if found:
            return "run", found[0][1]["id"], found[:1]
        batch = _batch(stores, ident)
        if not batch:
            raise UsageError(f"no run or batch {ident!r} in {', '.join(str(s.path) for s in stores)}")
        return "batch", ident, batch
    newest = [(s, rows[0]) for s in stores if (rows := s.runs(limit=1))]
    if not newest:
        raise UsageError(f"no runs in {', '.join(str(s.path) for s in stores)}")
    store, row = max(newest, key=lambda pair: pair[1]["started"])
    if row.get("batch"):
        return "batch", row["batch"], _batch(stores, row["batch"])
    return "run", row["id"], [(store, row)]


def _batch(stores: list[Store], batch: str) -> list[tuple[Store, dict[str, Any]]]:
    seen: set[str] = set()
    out = []
    for store in stores:
        for row in store.runs(batch=batch):
            if row["id"] not in seen:  # the same folder given twice, or copied into two artifacts
                seen.add(row["id"])
                out.append((store, row))
    return out


def _run_log(state_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's own records that the report uses: each item's end and the run's end."""
    path = state_dir / "logs" / run_id / "ralph.jsonl"
    out = []
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"item ended"' in line or '"message": "run ' in line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue  # a line cut short by a kill
    except OSError:
        return []
    return out


def _run(state_dir: Path, row: dict[str, Any], records: list[dict[str, Any]]) -> model.Run:
    # The history's stop_reason (a fixed word such as max_iterations) with the run's own sentence on it.
    ends = [r for r in records if str(r.get("message", "")).startswith("run ") and r.get("detail")]
    detail = ends[-1]["detail"] if ends else None
    reason = row.get("stop_reason")
    reason = f"{reason} — {detail}" if reason and detail and detail != reason else reason or detail
    if not reason and row["status"] != "running":
        reason = f"{row['status']} (exit {row['exit_code']})"
    return model.Run(id=row["id"], loop=row["loop"], status=row["status"], exit_code=row.get("exit_code"),
                     stop_reason=reason, started=row["started"], ended=row.get("ended"), host=row.get("host"),
                     shard=row.get("shard"), batch=row.get("batch"), trace_id=row.get("trace_id"),
                     state_dir=str(state_dir))


def _item_ends(run_id: str, records: list[dict[str, Any]]) -> list[model.Item]:
    return [model.Item(item=rec.get("item"), run_id=run_id, status=str(rec.get("status")),
                       succeeded=bool(rec.get("succeeded")), iterations=0, cost_usd=None, tokens=None,
                       stop_reason=rec.get("reason"), changed_lines=None, sessions=[])
            for rec in records if rec.get("message") == "item ended"]


def _duration(row: dict[str, Any], now: float) -> float | None:
    end = row.get("ended") or (now if row.get("status") == "running" else None)
    return None if end is None else max(0.0, end - row["started"])


def _json_list(text: Any) -> list[str]:
    if not text:
        return []
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _changes(row: dict[str, Any]) -> model.Changes | None:
    if all(row.get(k) is None for k in ("files_changed", "insertions", "deletions", "changed_files")):
        return None
    return model.Changes(files_changed=row.get("files_changed"), insertions=row.get("insertions"),
                         deletions=row.get("deletions"), files=_json_list(row.get("changed_files")),
                         commits=_json_list(row.get("commits")), git_before=row.get("git_before"),
                         git_after=row.get("git_after"))


def _log_file(state_dir: Path, run_id: str, raw: str | None) -> str | None:
    """The step's log on this machine: a state folder copied from another host (a CI artifact) keeps
    its ``logs/<run>/…`` layout under a different root."""
    if not raw or os.path.exists(raw):  # os.path, not Path: 10,000 steps in a big batch
        return raw or None
    marker = f"/logs/{run_id}/"
    if marker in raw:
        moved = os.path.join(state_dir, "logs", run_id, raw.split(marker, 1)[1])
        if os.path.exists(moved):
            return moved
    return raw


def _tail(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            data = fh.read()
    except OSError:
        return None
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > TAIL_BYTES and lines:
        lines = lines[1:]  # the first one is cut
    return "\n".join(lines[-TAIL_LINES:])


def _sessions(store: Store, state_dir: Path, run_id: str) -> list[model.Session]:
    now = time.time()
    steps: dict[str, list[model.Step]] = defaultdict(list)
    for t in store.run_steps(run_id):
        # model_construct: rows straight from the history's own columns, 10,000 of them in a big batch
        # (validating each is a third of the report's gathering time).
        steps[t["session_id"]].append(model.Step.model_construct(
            name=t["name"], kind=t["kind"], attempt=t["attempt"], status=t["status"], exit_code=t.get("exit_code"),
            started=t["started"], ended=t.get("ended"), duration=_duration(t, now),
            log=_log_file(state_dir, run_id, t.get("log_path")), reason=t.get("reason")))
    out = []
    for s in store.run_sessions(run_id):
        own = steps.get(s["id"], [])
        failed = next((t for t in reversed(own) if t.status not in ("ok", "running")), None)
        tail = _tail(failed.log) if failed is not None and s["status"] not in NOT_FAILED else None
        out.append(model.Session.model_construct(
            id=s["id"], run_id=run_id, title=s["title"], item=s.get("item"), iteration=s["iteration"],
            status=s["status"], started=s["started"], ended=s.get("ended"), duration=_duration(s, now),
            tokens_in=s.get("tokens_in"), tokens_out=s.get("tokens_out"), cost_usd=s.get("cost_usd"),
            trace_id=s.get("trace_id"), agent_session_id=s.get("agent_session_id"), reason=s.get("reason"),
            feedback=s.get("feedback"), fingerprint=s.get("fingerprint"), changes=_changes(s), steps=own,
            log_tail=tail, failed_step=failed.name if tail is not None and failed is not None else None))
    return out


def _lines(s: model.Session) -> int | None:
    c = s.changes
    if c is None or (c.insertions is None and c.deletions is None):
        return None
    return (c.insertions or 0) + (c.deletions or 0)


def _sum(values: Iterable[float | int | None]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _items(runs: list[model.Run], sessions: list[model.Session],
           ends: dict[tuple[str, str | None], model.Item]) -> list[model.Item]:
    by_run = {r.id: r for r in runs}
    grouped: dict[str | None, list[model.Session]] = defaultdict(list)
    for s in sessions:
        grouped[s.item].append(s)
    for _run, item in ends:  # an item that ended before its first session (resumed: already complete)
        grouped.setdefault(item, [])
    items = []
    for item, own in grouped.items():
        last = own[-1] if own else None
        run = by_run[last.run_id] if last else by_run[next(r for r, i in ends if i == item)]
        end = ends.get((run.id, item))
        if (last is not None and last.status == "running") or (end is None and run.status == "running"):
            status, ok, reason = "running", None, None
        elif end is not None:
            status, ok, reason = end.status, end.succeeded, end.stop_reason
        else:  # a history from before items' ends were logged: judge by the last session and the run
            status = last.status if last else run.status
            ok = status == "complete" or (status == "ok" and run.exit_code == 0)
            reason = run.stop_reason if len(grouped) == 1 else status
        tokens = _sum((s.tokens_in or 0) + (s.tokens_out or 0) if s.tokens_in is not None or s.tokens_out
                      is not None else None for s in own)
        items.append(model.Item(item=item, run_id=run.id, status=status, succeeded=ok, iterations=len(own),
                                cost_usd=_sum(s.cost_usd for s in own), tokens=tokens, stop_reason=reason,
                                changed_lines=_sum(_lines(s) for s in own), sessions=[s.id for s in own]))
    # Failed items first, then running ones, then the rest; in the order they started within each.
    rank = {False: 0, None: 1, True: 2}
    return sorted(items, key=lambda i: rank[i.succeeded])


def _totals(runs: list[model.Run], items: list[model.Item], sessions: list[model.Session]) -> model.Totals:
    running = any(r.status == "running" for r in runs)
    failed = [i for i in items if i.succeeded is False]
    codes = [r.exit_code for r in runs if r.exit_code is not None]
    if len(runs) == 1:
        outcome, reason = runs[0].status, runs[0].stop_reason
    else:
        statuses = {r.status for r in runs}
        outcome = ("running" if running else "interrupted" if "interrupted" in statuses
                   else "failed" if failed or any(codes) else "complete" if statuses == {"complete"} else "ok")
        reason = (f"{len(failed)} of {len(items)} items did not succeed" if failed
                  else None if running else f"all {len(items)} items succeeded")
    started = min((r.started for r in runs), default=None)
    ends = [r.ended for r in runs if r.ended is not None]
    ended = None if running or not ends else max(ends)
    wall = None if started is None else (ended or time.time()) - started
    return model.Totals(
        outcome=outcome, stop_reason=reason, exit_code=None if running else max(codes, default=None),
        started=started, ended=ended, wall=wall, iterations=len(sessions),
        tokens_in=_sum(s.tokens_in for s in sessions), tokens_out=_sum(s.tokens_out for s in sessions),
        cost_usd=_sum(s.cost_usd for s in sessions), items=len(items), items_failed=len(failed),
        insertions=_sum(s.changes.insertions for s in sessions if s.changes),
        deletions=_sum(s.changes.deletions for s in sessions if s.changes),
        files_changed=_sum(s.changes.files_changed for s in sessions if s.changes), running=running)


def _points(sessions: list[model.Session]) -> list[model.IterationPoint]:
    grouped: dict[int, list[model.Session]] = defaultdict(list)
    for s in sessions:
        grouped[s.iteration].append(s)
    return [model.IterationPoint(iteration=n, sessions=len(own), cost_usd=sum(s.cost_usd or 0.0 for s in own),
                                 tokens=sum((s.tokens_in or 0) + (s.tokens_out or 0) for s in own),
                                 changed_lines=_sum(_lines(s) for s in own))
            for n, own in sorted(grouped.items())]
