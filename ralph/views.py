"""Read-only commands over the history: ``sessions``, ``show`` and ``logs``."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ralph.errors import UsageError
from ralph.store import Store, history_exists


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(row: dict[str, Any]) -> float | None:
    if row.get("started") is None:
        return None
    end = row.get("ended") or (time.time() if row.get("status") == "running" else None)
    return None if end is None else round(end - row["started"], 6)


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _with_duration(row: dict[str, Any]) -> dict[str, Any]:
    from ralph.provenance import decode

    return decode({**row, "duration": _duration(row)})


def open_store(state_dir: Path) -> Store:
    store = Store(state_dir, create=history_exists(state_dir))
    return store


def sessions(state_dir: Path, loop: str | None, run: str | None, limit: int, as_json: bool,
             commit: str | None = None) -> int:
    show_host, where = False, state_dir
    if not history_exists(state_dir):
        rows: list[dict[str, Any]] = []
    else:
        store = Store(state_dir)
        where = state_dir if store.url is None else store.path
        try:
            store.mark_abandoned()
            if commit is not None:
                from ralph.changes import find_commit

                rows = [_with_duration(r) for r in find_commit(store, Path.cwd(), commit)]
            else:
                rows = [_with_duration(r) for r in store.sessions(loop, run, limit)]
            # Which machine ran each session (its logs are there): shown once a history has more than one.
            if store.shared or store.hosts() > 1:
                show_host = True
                hosts = store.run_hosts(sorted({r["run_id"] for r in rows}))
                rows = [{**r, "host": hosts.get(r["run_id"])} for r in rows]
        finally:
            store.close()
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        if commit is not None:
            print(f"no session made commit {commit}", file=sys.stderr)
            return 1
        print(f"no sessions in {where}", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    from ralph.provenance import compact

    columns = ("session", "title", "loop", "iter", "item", "status", "started", "duration", "cost", "change")
    for col in (*columns, "host") if show_host else columns:
        table.add_column(col, no_wrap=col in ("session", "started", "change"))
    for r in rows:
        cost = f"${r['cost_usd']:.4f}" if r.get("cost_usd") is not None else ""
        cells = [r["id"], r["title"], r["loop"], str(r["iteration"]), r.get("item") or "", r["status"],
                 _when(r["started"]), _fmt_duration(r["duration"]), cost, compact(r)]
        table.add_row(*cells, *([r.get("host") or ""] if show_host else []))
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=240)  # piped: never squeeze IDs into ellipses
    console.print(table)
    return 0


def _show_data(store: Store, ident: str) -> dict[str, Any]:
    session = store.find_session(ident) if ident.startswith("ses_") or not ident.startswith("run_") else None
    if session is not None:
        steps = [_with_duration(s) for s in store.steps(session["id"])]
        return {"kind": "session", **_with_duration(session), "steps": steps}
    run = store.find_run(ident) if not ident.startswith("ses_") else None
    if run is None:
        raise UsageError(f"no session or run {ident!r} in {store.path}")
    return {"kind": "run", **_with_duration(run),
            "sessions": [{**_with_duration(s), "steps": [_with_duration(t) for t in store.steps(s["id"])]}
                         for s in store.run_sessions(run["id"])]}


def show(state_dir: Path, ident: str, as_json: bool) -> int:
    from ralph import spantree

    store = Store(state_dir, create=False)
    try:
        data = _show_data(store, ident)
    finally:
        store.close()
    trace = spantree.for_record(state_dir, data)
    if as_json:
        data["spans"] = trace
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    out = []
    if data["kind"] == "session":
        out += _session_lines(data, indent="")
    else:
        stopped = f" ({data['stop_reason']})" if data.get("stop_reason") else ""
        out.append(f"run {data['id']}  loop {data['loop']}  {data['status']}{stopped}  exit {data.get('exit_code')}  "
                   f"{_when(data['started'])}  {_fmt_duration(data['duration'])}"
                   + (f"  host {data['host']}" if data.get("host") else ""))
        if data.get("trace_id"):
            out.append(f"  trace {data['trace_id']}")
        for s in data["sessions"]:
            out += _session_lines(s, indent="  ")
    if trace:
        out.append("")
        out.append("spans:")
        out += spantree.render(trace)
    print("\n".join(out))
    return 0


def _session_lines(s: dict[str, Any], indent: str) -> list[str]:
    lines = [f"{indent}session {s['id']}  {s['title']!r}",
             f"{indent}  loop {s['loop']}  run {s['run_id']}  iteration {s['iteration']}"
             + (f"  item {s['item']}" if s.get("item") else "")
             + f"  {s['status']}  {_when(s['started'])}  {_fmt_duration(s['duration'])}"]
    if s.get("trace_id"):
        lines.append(f"{indent}  trace {s['trace_id']}")
    extras = []
    if s.get("agent_session_id") and s["agent_session_id"] != s["id"]:
        extras.append(f"agent session {s['agent_session_id']}")
    if s.get("tokens_in") is not None:
        extras.append(f"tokens {s['tokens_in']} in / {s.get('tokens_out') or 0} out")
    if s.get("cost_usd") is not None:
        extras.append(f"cost ${s['cost_usd']:.4f}")
    if s.get("fingerprint"):  # what the judge compared for same_failure
        extras.append(f"failure {s['fingerprint']}")
    if extras:
        lines.append(f"{indent}  " + "  ".join(extras))
    from ralph.provenance import show_lines

    lines += [f"{indent}  {line}" for line in show_lines(s)]
    for t in s.get("steps", []):
        attempt = f" (attempt {t['attempt']})" if t["attempt"] > 1 else ""
        reason = f" [{t['reason']}]" if t.get("reason") else ""
        lines.append(f"{indent}  {t['kind']:<6} {t['name']}{attempt}: {t['status']}{reason}, "
                     f"exit {t['exit_code']}, {_fmt_duration(t['duration'])}  {t['log_path']}")
    return lines


def _elsewhere(store: Store, session: dict[str, Any], path: Path) -> None:
    """A shared history: the log may be on the machine that ran the session; say which."""
    import os

    host = (store.find_run(session["run_id"]) or {}).get("host")
    if host and host != os.uname().nodename:
        print(f"ralph: {path} is on host {host}, which ran session {session['id']}", file=sys.stderr)


def logs(state_dir: Path, ident: str, step: str | None, follow: bool = False) -> int:
    store = Store(state_dir, create=False)
    try:
        session = store.resolve_session(ident)
        if follow:  # prints what is there, then keeps up (a named step may not have started yet)
            from ralph.follow import follow as follow_session

            return follow_session(store, session["id"], step)
        steps = [s for s in store.steps(session["id"]) if step is None or s["name"] == step]
        if step is not None and not steps:
            raise UsageError(f"session {session['id']} has no step {step!r}")
        out = sys.stdout.buffer
        for s in steps:
            if len(steps) > 1:
                out.write(f"==> {s['name']}{'' if s['attempt'] == 1 else ' attempt ' + str(s['attempt'])} "
                          f"<==\n".encode())
            path = Path(s["log_path"])
            if not path.exists():
                _elsewhere(store, session, path)
            else:
                with path.open("rb") as fh:
                    while chunk := fh.read(1 << 20):
                        out.write(chunk)
        out.flush()
    finally:
        store.close()
    return 0
