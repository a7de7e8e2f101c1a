"""What the other issues' new work costs per iteration (issue 18 asks each for its own line):

- a failure fingerprint (issue 13): reading a failed step's log tail (40 lines) and hashing it
  normalised, in-process, against reading the same tail alone;
- a PostgreSQL lease (issue 17): one item's claim (``FOR UPDATE SKIP LOCKED`` ... ``UPDATE``) and its
  end, and one renewal of a host's leases, on the tests' throwaway local server, against a
  ``SELECT 1`` round trip on the same connection.

The git snapshot of 10,000 files has its own script (``bench_git.py``). Figures are recorded, no goal:
each is a fraction of a millisecond beside an iteration's few milliseconds (see ``bench_iterations``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _bench import HERE, median, result, scratch

sys.path.insert(0, str(HERE.parent))

# A failing test run's tail, with what changes from run to run (times, temp paths, IDs, durations).
LOG = "".join(
    f"tests/test_x.py::test_{n} FAILED at 2026-11-30T02:{n % 60:02d}:11Z in /tmp/pytest-{n}/t ses_22a4d7{n:06d}ab12CD "
    f"(0.{n:03d}s)\n" for n in range(200))


def per_call(fn: object, n: int) -> float:
    """Median over 5 batches of ``n`` calls, seconds per call."""
    out = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t0) / n)
    return median(out)


def fingerprint_line(folder: Path) -> None:
    from ralph.judge import Failure, tail

    log = folder / "agent.log"
    log.write_text(LOG)

    def both() -> str:
        return Failure("agent", "failed", 1, None, tail(log)).fingerprint

    def read() -> str:
        return tail(log)

    both()  # hashlib's import, once per run
    fp, base = per_call(both, 2000), per_call(read, 2000)
    result("judgement: a failure fingerprint (log tail + normalise + sha256)", ralph=fp * 1000,
           baseline=base * 1000, unit="ms", ratio=fp / base, goal="record", ok=None)


def lease_lines(folder: Path) -> None:
    from ralph.interrupt import never
    from ralph.queue import NOW, BatchQueue
    from ralph.store import Store
    from tests.support.postgres import Server, bindir

    found = bindir()
    if found is None:
        print("judgement: no PostgreSQL server binaries: the lease lines are left out")
        return
    server = Server(found)
    server.start()
    try:
        store = Store(folder, url=server.database())
        items = [f"item-{n:04d}" for n in range(2000)]
        store.start_run("run_bench", "bench", None, batch="b1")
        queue = BatchQueue(store, "bench", "b1", "run_bench", items, 60.0, never(), print)
        queue.seed()

        def claim_and_end() -> None:
            claim = queue.claim()
            assert claim is not None
            queue.finish(claim.item, "exhausted")

        def renew() -> None:
            # the statement BatchQueue._renew sends
            store.rows(f"UPDATE batch_items SET lease_until = {NOW} + ? WHERE loop = ? AND batch = ? "
                       "AND run_id = ? AND status = 'leased' RETURNING item",
                       (60.0, "bench", "b1", "run_bench"))

        def ping() -> None:
            store.rows("SELECT 1 AS one")

        lease = per_call(claim_and_end, 300)
        base = per_call(ping, 300)
        for _ in range(64):  # a host's 64 items held while their leases are renewed
            queue.claim()
        renewal = per_call(renew, 200)
        result("judgement: a PostgreSQL lease per item (claim + end)", ralph=lease * 1000, baseline=base * 1000,
               unit="ms", ratio=lease / base, goal="record", ok=None)
        result("judgement: a PostgreSQL lease renewal (64 items held, every lease/3)", ralph=renewal * 1000,
               baseline=base * 1000, unit="ms", ratio=renewal / base, goal="record", ok=None)
        store.close()
    finally:
        server.remove()


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    with scratch("judgement") as folder:
        fingerprint_line(folder)
        lease_lines(folder)


if __name__ == "__main__":
    main()
