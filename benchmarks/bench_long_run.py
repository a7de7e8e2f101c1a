"""Long runs: ralph's RSS after 5,000 iterations vs after 100. Goal: within 10 MiB.

The agent reads its parent's (ralph's) VmRSS from /proc at a few iterations, so the figure is taken
inside the run, in the same phase of every iteration it is taken at.
"""

from __future__ import annotations

import argparse

from _bench import RALPH, db_rows, loop_file, result, scratch, timed, warm

PROBE = ('case "$RALPH_ITERATION" in {points}) '
         'echo "$RALPH_ITERATION $(grep VmRSS /proc/$PPID/status | tr -s " " | cut -d" " -f2)" >> {out};; esac')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()
    n = args.iterations
    points = sorted({100, n // 5, 2 * n // 5, 3 * n // 5, 4 * n // 5, n})
    warm()
    with scratch("long") as tmp:
        out = tmp / "rss.txt"
        script = PROBE.format(points="|".join(map(str, points)), out=out)
        loop = loop_file(tmp, "bench-long", ["/bin/sh", "-c", script], n)
        state = tmp / "state"
        run = timed([*RALPH, "run", str(loop), "--quiet", "--state-dir", str(state)])
        assert db_rows(state, "SELECT count(*) FROM sessions WHERE status = 'ok'")[0][0] == n
        rss = {int(i): int(kb) / 1024 for i, kb in (line.split() for line in out.read_text().splitlines())}
        print(f"{n} iterations in {run.seconds:.1f} s ({run.seconds / n * 1000:.2f} ms each)")
        print("RSS by iteration: " + ", ".join(f"{i}: {mib:.1f} MiB" for i, mib in sorted(rss.items())))
        growth = rss[n] - rss[100]
        result(f"long run: RSS growth, iteration 100 -> {n}", ralph=growth, baseline=rss[100], unit="MiB",
               goal="<= 10 MiB", ok=growth <= 10, rss_mib={str(k): round(v, 1) for k, v in sorted(rss.items())})


if __name__ == "__main__":
    main()
