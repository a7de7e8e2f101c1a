"""The report at scale: a batch of 500 items x 10 iterations (5,000 sessions, 10,000 steps, a failed
step's log for every fourth item) written with the real ``ralph.store.Store`` and ``RunLog``. Measured:
``ralph report`` to HTML (time and file size), ``--format md`` and ``--format json``. Baselines, in the
same run and alternating with it, over the same history: ``ralph show RUN --json`` (the run, its
sessions and their steps printed as JSON: the same rows, without log tails or rendering) and
``ralph sessions --json --limit 5000`` (the sessions' rows alone; recorded).

Goals: the HTML page within 3x ``show RUN --json`` and under 8 MiB.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from _bench import PY, RALPH, db_rows, env, median, result, scratch, timed, warm

from ralph.runlog import RunLog
from ralph.session import new_run_id, new_session_id
from ralph.store import Store

ITEMS, ITERATIONS, ROUNDS = 500, 10, 3


def history(state: Path) -> None:
    rng = random.Random(14)
    store = Store(state)
    run_id = new_run_id()
    store.start_run(run_id, "nightly", None, batch="nightly-bench", shard="1/1")
    runlog = RunLog(run_id, state / "logs" / run_id / "ralph.jsonl")
    for n in range(ITEMS):
        item = f"service-{n:03d}"
        failing = n % 4 == 0
        previous = None
        for it in range(1, ITERATIONS + 1):
            sid = new_session_id()
            store.start_session(id=sid, run_id=run_id, loop="nightly", title=f"Nightly {item} #{it}", iteration=it,
                                item=item, previous_id=previous, trace_id=f"{rng.getrandbits(128):032x}")
            folder = state / "logs" / run_id / sid
            folder.mkdir(parents=True)
            ok = not failing and rng.random() > 0.2
            for name, kind in (("agent", "agent"), ("check", "check")):
                log = folder / f"{name}.log"
                log.write_text("".join(f"{name} line {k} of {item}\n" for k in range(40)))
                step = store.start_step(session_id=sid, run_id=run_id, name=name, kind=kind, attempt=1,
                                        log_path=str(log))
                store.finish_step(step, "ok" if ok or name == "agent" else "failed", 0 if ok or name == "agent"
                                  else 1)
            store.finish_session(sid, "ok" if ok else "failed", tokens_in=rng.randint(1000, 90000),
                                 tokens_out=rng.randint(100, 9000), cost_usd=round(rng.random() / 10, 4))
            previous = sid
        runlog.info("item ended", item=item, status="exhausted" if failing else "ok",
                    reason=f"max_iterations ({ITERATIONS}) reached", iterations=ITERATIONS, succeeded=not failing)
    store.finish_run(run_id, "failed", 1)
    runlog.close()
    store.close()


def main() -> None:
    warm()
    with scratch("report") as tmp:
        state = tmp / "state"
        t0 = time.perf_counter()
        history(state)
        print(f"history of {ITEMS} items x {ITERATIONS} iterations written in {time.perf_counter() - t0:.1f} s")
        e = env()
        timed([PY, "-c", "import ralph.report.render, jinja2"], env_=e)  # compile the report's modules once
        run_id = str(db_rows(state, "SELECT id FROM runs")[0][0])
        html, md, js, base, rows = [], [], [], [], []
        for _ in range(ROUNDS):  # alternating, so the machine's noise hits both alike
            base.append(timed([*RALPH, "show", run_id, "--json", "--state-dir", str(state)], env_=e).seconds)
            rows.append(timed([*RALPH, "sessions", "--json", "--limit", "5000", "--state-dir", str(state)],
                              env_=e).seconds)
            html.append(timed([*RALPH, "report", "--state-dir", str(state), "-o", str(tmp / "report.html")],
                              env_=e).seconds)
            md.append(timed([*RALPH, "report", "--state-dir", str(state), "--format", "md"], env_=e).seconds)
            js.append(timed([*RALPH, "report", "--state-dir", str(state), "--format", "json"], env_=e).seconds)
        size = (tmp / "report.html").stat().st_size / 2**20
        b = median(base)
        result("report_html_time", ralph=median(html), baseline=b, ratio=median(html) / b, unit="s",
               goal="<= 3x show RUN --json", ok=median(html) <= 3 * b)
        result("report_html_vs_sessions_json", ralph=median(html), baseline=median(rows),
               ratio=median(html) / median(rows), unit="s", goal="(shown)", ok=None)
        result("report_md_time", ralph=median(md), baseline=b, ratio=median(md) / b, unit="s", goal="(shown)",
               ok=None)
        result("report_json_time", ralph=median(js), baseline=b, ratio=median(js) / b, unit="s", goal="(shown)",
               ok=None)
        result("report_html_size", ralph=size, baseline=None, unit="MiB", goal="< 8 MiB", ok=size < 8)


if __name__ == "__main__":
    main()
