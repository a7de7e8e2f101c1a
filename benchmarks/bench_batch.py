"""Wide batches: 2,000 items of ``sleep 0.05`` at ``parallel: 64`` vs ``xargs -P 64`` running the same
2,000 sleeps. Goal: ralph ≤ 1.5x xargs, every item's session in the history, peak RSS ≤ 100 MiB.

Rounds alternate xargs and ralph; the goal is judged on the median of the rounds' ratios. ralph's
own CPU time (user + system of ralph and its children) is printed beside it: on 2 cores ralph's
bookkeeping, not the sleeps, is what a wide batch waits for.
"""

from __future__ import annotations

import argparse

from _bench import RALPH, db_rows, median, result, scratch, timed, warm, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, par = args.items, args.parallel
    warm()
    with scratch("batch") as tmp:
        write(tmp / "items.txt", "".join(f"item-{i}\n" for i in range(n)))
        loop = write(tmp / "loop.yaml", "name: bench-batch\nworkdir: .\ntitle: 'bench {item} #{iteration}'\n"
                     "agent:\n  command: ['sleep', '0.05']\nuntil:\n  max_iterations: 1\n"
                     f"batch:\n  items_file: items.txt\n  parallel: {par}\n")
        rounds = []
        for r in range(args.rounds):  # a new state folder each round: none is deleted before the end
            xargs = timed(["sh", "-c", f"seq {n} | xargs -P {par} -I{{}} sleep 0.05"])
            state = tmp / f"state-{r}"
            ralph = timed([*RALPH, "run", str(loop), "--quiet", "--state-dir", str(state)])
            (sessions,), = db_rows(state, "SELECT count(*) FROM sessions WHERE status = 'exhausted' OR "
                                   "status = 'ok'")
            assert sessions == n, sessions
            rounds.append({"xargs": xargs.seconds, "ralph": ralph.seconds, "cpu": ralph.cpu,
                           "xcpu": xargs.cpu, "rss": ralph.maxrss_mib})
            print(f"xargs {xargs.seconds:.2f} s (cpu {xargs.cpu:.2f} s) | ralph {ralph.seconds:.2f} s "
                  f"(cpu {ralph.cpu:.2f} s, ralph + sleeps; {ralph.maxrss_mib:.1f} MiB) | "
                  f"ratio {ralph.seconds / xargs.seconds:.2f}", flush=True)
        ratio = median([r["ralph"] / r["xargs"] for r in rounds])
        result(f"batch: {n} items of sleep 0.05 at parallel {par} vs xargs -P {par}",
               ralph=median([r["ralph"] for r in rounds]), baseline=median([r["xargs"] for r in rounds]),
               unit="s", ratio=ratio, goal="ralph <= 1.5x xargs", ok=ratio <= 1.5)
        cpu = median([(r["cpu"] - r["xcpu"]) / n * 1000 for r in rounds])
        result("batch: ralph's own CPU per item (beyond what xargs's sleeps take)", ralph=cpu, baseline=None,
               unit="ms/item", goal="record", ok=None)
        rss = max(r["rss"] for r in rounds)
        result("batch: peak RSS", ralph=rss, baseline=None, unit="MiB", goal="<= 100 MiB", ok=rss <= 100)


if __name__ == "__main__":
    main()
