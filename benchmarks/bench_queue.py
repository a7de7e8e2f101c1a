"""The shared batch queue: 3 ``ralph run`` processes sharing a batch of 1,000 short items (/bin/true,
one iteration each) through one local PostgreSQL (a throwaway server, as the tests start it), against
the same batch run by one process on one host with the SQLite history, measured in the same run.

Recorded: claims per second over the 3 hosts against items per second of the one SQLite host; the
overhead per item as CPU time (ralph and its agents; the server's own CPU is not counted) against
that host's; and one host on PostgreSQL, to split the database's cost from the sharing's. On a
2-core machine the 3 hosts and the server share the same cores, so more hosts cannot mean more
items per second here; on N machines they do. No goal: the figures are for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import HERE, RALPH, env, median, result, scratch, timed, warm, write

sys.path.insert(0, str(HERE.parent))
from tests.support.postgres import Server, bindir


def batch_loop(folder: Path, items: int) -> Path:
    names = json.dumps([f"item-{n:04d}" for n in range(items)])
    # workdir: the scratch folder, outside this checkout (no git snapshots of the repository per item)
    return write(folder / "loop.yaml", "name: queue\nworkdir: .\nagent:\n  command: ['/bin/true']\n"
                 f"until:\n  max_iterations: 1\nbatch:\n  items: {names}\n  parallel: 1\n  lease: 60s\n")


def hosts(loop: Path, folder: Path, count: int, url: str | None, batch: str) -> tuple[float, float]:
    """Wall seconds for ``count`` concurrent ``ralph run -q`` (each its own state folder), and the
    CPU seconds they and their children used."""
    procs = []
    t0 = time.perf_counter()
    for n in range(count):
        extra = {"RALPH_STATE_DIR": str(folder / f"{batch}-state-{n}"), "RALPH_BATCH_ID": batch}
        if url:
            extra["RALPH_DATABASE_URL"] = url
        err = tempfile.TemporaryFile()  # noqa: SIM115 - closed once its process is reaped
        procs.append((subprocess.Popen([*RALPH, "run", str(loop), "-q"], env=env(**extra), stdout=subprocess.DEVNULL,
                                       stderr=err), err))
    cpu = 0.0
    for proc, err in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"ralph run exited {proc.returncode}: {err.read().decode()[-2000:]}")
        err.close()
    return time.perf_counter() - t0, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    found = bindir()
    if found is None:
        raise SystemExit("bench_queue: no PostgreSQL server binaries (pg_config --bindir / initdb)")
    warm()
    server = Server(found)
    server.start()
    try:
        with scratch("queue") as folder:
            loop = batch_loop(folder, args.items)
            timed([*RALPH, "validate", str(loop)])
            runs: dict[str, list[tuple[float, float]]] = {"sqlite": [], "pg1": [], "pg3": []}
            for n in range(args.rounds):  # alternated: a busy machine slows all three alike
                runs["sqlite"].append(hosts(loop, folder, 1, None, f"sqlite-{n}"))
                runs["pg1"].append(hosts(loop, folder, 1, server.database(), f"pg1-{n}"))
                runs["pg3"].append(hosts(loop, folder, 3, server.database(), f"pg3-{n}"))
    finally:
        server.remove()
    wall = {k: median([w for w, _ in v]) for k, v in runs.items()}
    cpu = {k: median([c for _, c in v]) / args.items * 1000 for k, v in runs.items()}  # ms per item
    result(f"queue: {args.items} items, 3 hosts on PostgreSQL: claims per second (vs 1 host on SQLite)",
           ralph=args.items / wall["pg3"], baseline=args.items / wall["sqlite"], unit="items/s", goal="record",
           ok=None, ratio=wall["sqlite"] / wall["pg3"], cores=os.cpu_count())
    result("queue: CPU per item, 3 hosts on PostgreSQL vs 1 host on SQLite (ralph + agents, not the server)",
           ralph=cpu["pg3"], baseline=cpu["sqlite"], unit="ms", goal="record", ok=None,
           ratio=cpu["pg3"] / cpu["sqlite"])
    result("queue: wall time per item, 1 host on PostgreSQL vs 1 host on SQLite",
           ralph=wall["pg1"] / args.items * 1000, baseline=wall["sqlite"] / args.items * 1000, unit="ms",
           goal="record", ok=None, ratio=wall["pg1"] / wall["sqlite"])


if __name__ == "__main__":
    main()
