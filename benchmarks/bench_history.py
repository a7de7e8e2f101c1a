"""History at scale: with 100,000 sessions in the store (1,000 runs of 100 iterations, an agent and a
check step each), ``ralph sessions --limit 20`` and ``ralph show ID`` median ≤ 300 ms. Baseline:
the same rows read by a bare ``python -c 'import sqlite3 ...'``.

The rows go in with direct SQL through ``ralph.store``'s own schema (a Store creates the file), and
traces.jsonl gets what those sessions would have exported, one OTLP JSON line per iteration and one
per run, because ``ralph show`` reads it to draw the span tree. ralph.db's growth per session is
recorded from a real run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from _bench import PY, RALPH, db_rows, env, loop_file, median, result, scratch, timed, warm

from ralph.store import Store

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RESOURCE = {"attributes": [
    {"key": "telemetry.sdk.language", "value": {"stringValue": "python"}},
    {"key": "telemetry.sdk.name", "value": {"stringValue": "opentelemetry"}},
    {"key": "telemetry.sdk.version", "value": {"stringValue": "1.45.2"}},
    {"key": "service.instance.id", "value": {"stringValue": "fbc06685-8f7c-4fda-82ab-ea87fdb4ca65"}},
    {"key": "service.name", "value": {"stringValue": "ralph"}}]}


def _id(prefix: str, ms: int, rng: random.Random) -> str:
    """The shape of ralph's IDs (``ralph.session``): 12 hex of ms*4096+counter, 14 base62."""
    return f"{prefix}_{(ms * 0x1000 + 1) & 0xFFFF_FFFF_FFFF:012x}{''.join(rng.choices(_B62, k=14))}"


def _attrs(**values: object) -> list[dict[str, object]]:
    return [{"key": key.replace("__", "."), "value": {"intValue" if key in _INTS else "stringValue": value}}
            for key, value in values.items()]


_INTS = {"ralph__iteration", "ralph__attempt", "process__exit__code", "process__pid"}


def _span(trace: str, span: str, parent: str | None, name: str, start: str, end: str,
          attributes: list[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {"traceId": trace, "spanId": span}
    if parent:
        out["parentSpanId"] = parent
    out.update({"flags": 256, "name": name, "kind": 1, "startTimeUnixNano": start, "endTimeUnixNano": end,
                "attributes": attributes, "status": {}})
    return out


def _template(spans: list[dict[str, object]]) -> list[str]:
    """One OTLP JSON line as the file exporter writes it, cut at its @NAME@ placeholders: even items are
    text, odd ones the names to fill in (json.dumps once, not 100,000 times)."""
    doc = {"resourceSpans": [{"resource": RESOURCE, "scopeSpans": [{"scope": {"name": "ralph"}, "spans": spans}]}]}
    return re.split(r"@(\w+)@", json.dumps(doc, separators=(",", ":")) + "\n")


def _fill(template: list[str], values: dict[str, str]) -> str:
    return "".join(part if i % 2 == 0 else values[part] for i, part in enumerate(template))


def _templates() -> tuple[list[str], list[str]]:
    common = {"session__id": "@sid@", "ralph__iteration": "@i@", "ralph__run_id": "@run@"}
    iteration = _template([
        _span("@trace@", "@agent@", "@iter@", "ralph.step", "@t0@", "@t1@", _attrs(
            **common, ralph__step__name="agent", ralph__step__kind="agent", ralph__attempt="1",
            process__executable__name="opencode", process__exit__code="0", process__pid="4242",
            ralph__step__status="ok")),
        _span("@trace@", "@check@", "@iter@", "ralph.step", "@t1@", "@t2@", _attrs(
            **common, ralph__step__name="check", ralph__step__kind="check", ralph__attempt="1",
            process__executable__name="sh", process__command_args="pytest -q", process__exit__code="1",
            process__pid="4243", ralph__step__status="failed")),
        _span("@trace@", "@iter@", "@root@", "ralph.iteration", "@t0@", "@t2@", _attrs(
            **common, session__title="bench #@i@", ralph__loop="bench", ralph__outcome="ok")),
    ])
    run = _template([_span("@trace@", "@root@", None, "ralph.run", "@t0@", "@t2@", _attrs(
        ralph__run_id="@run@", ralph__loop="bench", ralph__outcome="exhausted", process__exit__code="1"))])
    return iteration, run


def generate(state: Path, runs: int, per_run: int, seed: int = 7) -> list[str]:
    """Fill ``state`` with ``runs`` x ``per_run`` finished sessions; returns the session IDs, oldest first."""
    rng = random.Random(seed)
    Store(state).close()  # the schema, exactly as ralph creates it
    iteration_line, run_line = _templates()
    t = time.time() - runs * per_run * 60.0  # one session a minute, ending now
    logs = str(state / "logs")
    run_rows, session_rows, step_rows, ids = [], [], [], []
    with (state / "traces.jsonl").open("w", encoding="utf-8") as traces:
        for _ in range(runs):
            run_id, run_start = _id("run", int(t * 1000), rng), t
            trace, run_span = rng.randbytes(16).hex(), rng.randbytes(8).hex()
            previous = None
            for i in range(1, per_run + 1):
                sid = _id("ses", int(t * 1000), rng)
                iter_span, agent_span, check_span = (rng.randbytes(8).hex() for _ in range(3))
                start, agent_end, end = t, t + 50.0, t + 55.0
                session_rows.append((sid, run_id, "bench", f"bench #{i}", i, None, "ok", start, end, previous,
                                     trace, iter_span))
                log_dir = f"{logs}/{run_id}/{sid}"
                step_rows.append((sid, run_id, "agent", "agent", 1, "ok", 0, 4242, start, agent_end,
                                  f"{log_dir}/agent.log", agent_span, None))
                step_rows.append((sid, run_id, "check", "check", 1, "failed", 1, 4243, agent_end, end,
                                  f"{log_dir}/check.log", check_span, None))
                traces.write(_fill(iteration_line, {
                    "trace": trace, "root": run_span, "iter": iter_span, "agent": agent_span, "check": check_span,
                    "sid": sid, "run": run_id, "i": str(i), "t0": str(int(start * 1e9)),
                    "t1": str(int(agent_end * 1e9)), "t2": str(int(end * 1e9))}))
                ids.append(sid)
                previous, t = sid, t + 60.0
            run_rows.append((run_id, "bench", "/bench/loop.yaml", "exhausted", 1, run_start, t, "bench-host",
                             1, "1", trace, run_span))
            traces.write(_fill(run_line, {"trace": trace, "root": run_span, "run": run_id,
                                          "t0": str(int(run_start * 1e9)), "t2": str(int(t * 1e9))}))
    with contextlib.closing(sqlite3.connect(state / "ralph.db")) as db, db:
        db.executemany("INSERT INTO runs (id, loop, loop_file, status, exit_code, started, ended, host, pid, "
                       "pid_start, trace_id, span_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", run_rows)
        db.executemany("INSERT INTO sessions (id, run_id, loop, title, iteration, item, status, started, ended, "
                       "previous_id, trace_id, span_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", session_rows)
        db.executemany("INSERT INTO steps (session_id, run_id, name, kind, attempt, status, exit_code, pid, "
                       "started, ended, log_path, span_id, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", step_rows)
    return ids


def db_bytes(state: Path) -> int:
    with contextlib.closing(sqlite3.connect(state / "ralph.db")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in state.glob("ralph.db*"))


def growth_per_session(tmp: Path, n: int) -> tuple[float, float, float]:
    """Bytes per session of ralph.db, traces.jsonl and ralph.jsonl, from a real run of n no-op iterations."""
    loop = loop_file(tmp, "bench-grow", ["/bin/true"], n, title="grow #{iteration}", file="grow.yaml")
    state = tmp / "grow"
    timed([*RALPH, "run", str(loop), "--quiet", "--state-dir", str(state), "--max-iterations", "1"])
    db0, tr0 = db_bytes(state), (state / "traces.jsonl").stat().st_size
    timed([*RALPH, "run", str(loop), "--quiet", "--state-dir", str(state)])
    runlogs = sorted((state / "logs").glob("*/ralph.jsonl"), key=lambda p: p.stat().st_mtime)
    return ((db_bytes(state) - db0) / n, ((state / "traces.jsonl").stat().st_size - tr0) / n,
            runlogs[-1].stat().st_size / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--per-run", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    warm()
    with scratch("history") as tmp:
        state = tmp / "state"
        t0 = time.perf_counter()
        ids = generate(state, args.runs, args.per_run)
        n = len(ids)
        db_size, traces_size = db_bytes(state), (state / "traces.jsonl").stat().st_size
        print(f"generated {n} sessions in {time.perf_counter() - t0:.1f} s: ralph.db {db_size / 2**20:.1f} MiB "
              f"({db_size / n:.0f} B/session), traces.jsonl {traces_size / 2**20:.1f} MiB")
        assert db_rows(state, "SELECT count(*) FROM sessions")[0][0] == n
        middle, newest, oldest = ids[n // 2], ids[-1], ids[0]
        run_id = db_rows(state, "SELECT run_id FROM sessions WHERE id = ?", (middle,))[0][0]
        cases = {
            "ralph sessions --limit 20": [*RALPH, "sessions", "--limit", "20", "--state-dir", str(state)],
            "ralph show SESSION (middle of the history)": [*RALPH, "show", middle, "--state-dir", str(state)],
        }
        extra = {
            "ralph show SESSION (newest)": [*RALPH, "show", newest, "--state-dir", str(state)],
            "ralph show SESSION (oldest)": [*RALPH, "show", oldest, "--state-dir", str(state)],
            "ralph show RUN (100 sessions)": [*RALPH, "show", str(run_id), "--state-dir", str(state)],
        }
        sql = "SELECT * FROM sessions ORDER BY started DESC, rowid DESC LIMIT 20"
        db = str(state / "ralph.db")
        baseline = [PY, "-c", f"import sqlite3; print(sqlite3.connect({db!r}).execute({sql!r}).fetchall())"]
        times: dict[str, list[float]] = {name: [] for name in [*cases, *extra, "baseline"]}
        cpu: dict[str, list[float]] = {name: [] for name in [*cases, *extra]}
        for _ in range(args.rounds):
            times["baseline"].append(timed(baseline).seconds)
            for name, argv in {**cases, **extra}.items():
                run = timed(argv)
                times[name].append(run.seconds)
                cpu[name].append(run.cpu)
        shown = subprocess.run(cases["ralph show SESSION (middle of the history)"], env=env(), capture_output=True,
                               text=True, check=True).stdout
        assert "ralph.iteration #1" in shown and "agent:agent" in shown and "check:check" in shown, shown
        base = median(times["baseline"])
        for name in [*cases, *extra]:
            med = median(times[name])
            print(f"{name}: median {med * 1000:.0f} ms (min {min(times[name]) * 1000:.0f}, "
                  f"max {max(times[name]) * 1000:.0f}), CPU median {median(cpu[name]) * 1000:.0f} ms")
            if name in cases:
                result(f"history (100k sessions): {name}", ralph=med * 1000, baseline=base * 1000, unit="ms",
                       ratio=med / base, goal="median <= 300 ms", ok=med <= 0.3, cpu_ms=round(median(cpu[name]) * 1000))
        print(f"baseline (python + sqlite3, same query): median {base * 1000:.0f} ms")
        shutil.rmtree(state, ignore_errors=True)
        db_per, traces_per, runlog_per = growth_per_session(tmp, 200)
        print(f"per session of a real no-op run: ralph.db {db_per:.0f} B, traces.jsonl {traces_per:.0f} B, "
              f"ralph.jsonl {runlog_per:.0f} B")
        result("history: ralph.db growth per session", ralph=db_per, baseline=None, unit="B", goal="record",
               ok=None, synthetic_bytes_per_session=round(db_size / n), traces_bytes_per_session=round(traces_per),
               runlog_bytes_per_session=round(runlog_per))


if __name__ == "__main__":
    main()
