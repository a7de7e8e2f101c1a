"""The shared batch queue: 3 ``ralph run`` processes sharing a batch of 1,000 short items (/bin/true,
one iteration each) through one local PostgreSQL (a throwaway server, as the tests start it), against
the same batch run by one process on one host with the SQLite history, measured in the same run.

Recorded: claims per second over the 3 hosts, and the overhead per item (host-seconds per item: 3 x
the wall time / 1,000) against SQLite on one host, as a ratio; also one host on PostgreSQL, to split
the database's cost from the sharing's. No goal: the figures are for the README's table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _bench import HERE, RALPH, env, median, result, scratch, timed, warm, write

sys.path.insert(0, str(HERE.parent))
from tests.support.postgres import Server, bindir


def batch_loop(folder: Path, items: int) -> Path:
    names = json.dumps([f"item-{n:04d}" for n in range(items)])
    return write(folder / "loop.yaml", f"name: queue\nagent:\n  command: ['/bin/true']\nuntil:\n  max_iterations: 1\n"
                 f"batch:\n  items: {names}\n  parallel: 1\n  lease: 60s\n")


def hosts(loop: Path, folder: Path, count: int, url: str | None, batch: str) -> float:
    """Wall seconds for ``count`` concurrent ``ralph run -q`` (each its own state folder)."""
    procs = []
    t0 = time.perf_counter()
    for n in range(count):
        extra = {"RALPH_STATE_DIR": str(folder / f"{batch}-state-{n}"), "RALPH_BATCH_ID": batch}
        if url:
            extra["RALPH_DATABASE_URL"] = url
        procs.append(subprocess.Popen([*RALPH, "run", str(loop), "-q"], env=env(**extra), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"ralph run exited {proc.returncode}: {err[-2000:]}")
    return time.perf_counter() - t0


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
            sqlite, pg_one, pg_three = [], [], []
            for n in range(args.rounds):  # alternated: a busy machine slows all three alike
                sqlite.append(hosts(loop, folder, 1, None, f"sqlite-{n}"))
                pg_one.append(hosts(loop, folder, 1, server.database(), f"pg1-{n}"))
                pg_three.append(hosts(loop, folder, 3, server.database(), f"pg3-{n}"))
    finally:
        server.remove()
    base = median(sqlite) / args.items * 1000
    one = median(pg_one) / args.items * 1000
    three = median(pg_three) * 3 / args.items * 1000
    result(f"queue: {args.items} items, 3 hosts on PostgreSQL: claims per second", ralph=args.items / median(pg_three),
           baseline=args.items / median(sqlite), unit="items/s", goal="record", ok=None,
           ratio=median(sqlite) / median(pg_three))
    result("queue: overhead per item, 3 hosts on PostgreSQL (host-ms/item) vs 1 host on SQLite", ralph=three,
           baseline=base, unit="ms", goal="record", ok=None, ratio=three / base)
    result("queue: overhead per item, 1 host on PostgreSQL vs 1 host on SQLite", ralph=one, baseline=base, unit="ms",
           goal="record", ok=None, ratio=one / base)


if __name__ == "__main__":
    main()
