"""Per-iteration overhead: N = 1,000 iterations of /bin/true as the agent vs a bash ``for`` loop running
/bin/true N times with two session variables set. Goal (issue 18): per iteration ≤ 1.5x bash, per
iteration being (T(N) - T(1)) / (N - 1), so start-up and exit are left out, median of the rounds.

ralph runs as users run it: ``ralph run loop.yaml --quiet`` with the history, step logs, run log and
the file trace exporter on. Each round times bash and ralph at N and at 1 back to back (other work on
the machine then slows both sides alike). The whole run's ratio (start-up included) is recorded.
"""

from __future__ import annotations

import argparse
import time

from _bench import PY, RALPH, db_rows, loop_file, median, result, scratch, timed, warm

BASH = ('for i in $(seq {n}); do OPENCODE_SESSION_ID="ses_$i" OPENCODE_SESSION_TITLE="bench #$i" /bin/true; '
        'done')
# What any Python runner pays before doing anything of its own: the interpreter, and subprocess
# spawning /bin/true with its output on a pipe, its own session and the two variables. Recorded, to
# show how much of the ratio to bash is Python's spawning rather than ralph's bookkeeping.
FLOOR = """
import os, subprocess
env = dict(os.environ)
for i in range({n}):
    env["OPENCODE_SESSION_ID"], env["OPENCODE_SESSION_TITLE"] = f"ses_{{i}}", f"bench #{{i}}"
    p = subprocess.Popen(["/bin/true"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    p.stdout.read()
    p.wait()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.iterations
    warm()
    with scratch("iter") as tmp:
        loop = loop_file(tmp, "bench-iter", ["/bin/true"], n, title="bench #{iteration}")
        one = loop_file(tmp, "bench-iter", ["/bin/true"], 1, title="bench #{iteration}", file="one.yaml")
        rounds = []
        for r in range(args.rounds):  # a new state folder each round: none is deleted before the end
            bash = timed(["bash", "-c", BASH.format(n=n)]).seconds
            bash1 = timed(["bash", "-c", BASH.format(n=1)]).seconds
            ralph1 = timed([*RALPH, "run", str(one), "--quiet", "--state-dir", str(tmp / f"one-{r}")]).seconds
            floor = timed([PY, "-c", FLOOR.format(n=n)]).seconds
            state = tmp / f"state-{r}"
            began = time.time()
            ralph = timed([*RALPH, "run", str(loop), "--quiet", "--state-dir", str(state)]).seconds
            (run_start, run_end), = db_rows(state, "SELECT started, ended FROM runs")
            (first, last, ok), = db_rows(state, "SELECT min(started), max(ended), sum(status = 'ok') FROM sessions")
            logs = len(list((state / "logs").glob("*/*/agent.log")))
            assert ok == n and logs == n, (ok, logs)
            assert (state / "traces.jsonl").stat().st_size > 0
            rounds.append({"bash": bash, "floor": floor, "ralph": ralph, "start": run_start - began,
                           "loop": last - first, "exit": began + ralph - run_end,
                           "per_bash": (bash - bash1) / (n - 1), "per_ralph": (ralph - ralph1) / (n - 1)})
        for r in rounds:
            print(f"bash {r['bash']:.3f} s | python+subprocess {r['floor']:.3f} s | ralph {r['ralph']:.3f} s = "
                  f"start-up {r['start']:.3f} + "
                  f"{n} iterations {r['loop']:.3f} ({r['loop'] / n * 1000:.2f} ms each) + exit {r['exit']:.3f}"
                  f" | ratio {r['ralph'] / r['bash']:.2f} | per iteration: ralph {r['per_ralph'] * 1000:.3f} ms, "
                  f"bash {r['per_bash'] * 1000:.3f} ms, ratio {r['per_ralph'] / r['per_bash']:.2f}", flush=True)
        ratio = median([r["ralph"] / r["bash"] for r in rounds])
        steady = median([r["loop"] / r["bash"] for r in rounds])
        per_ralph, per_bash = median([r["loop"] / n for r in rounds]), median([r["bash"] / n for r in rounds])
        start, end = median([r["start"] for r in rounds]), median([r["exit"] for r in rounds])
        print(f"median per iteration: ralph {per_ralph * 1000:.2f} ms, bash {per_bash * 1000:.2f} ms; "
              f"start-up {start:.3f} s, exit {end:.3f} s")
        per = median([r["per_ralph"] / r["per_bash"] for r in rounds])
        result(f"iterations: per iteration, (T({n}) - T(1)) / {n - 1}",
               ralph=median([r["per_ralph"] for r in rounds]) * 1000,
               baseline=median([r["per_bash"] for r in rounds]) * 1000, unit="ms/iteration", ratio=per,
               goal="ralph <= 1.5x bash", ok=per <= 1.5)
        result(f"iterations: {n} x /bin/true, whole run (start-up included)",
               ralph=median([r["ralph"] for r in rounds]),
               baseline=median([r["bash"] for r in rounds]), unit="s", ratio=ratio, goal="record", ok=None)
        floor = median([r["floor"] for r in rounds])
        result(f"iterations: {n} x /bin/true, bare python + subprocess loop (no ralph)", ralph=floor,
               baseline=median([r["bash"] for r in rounds]), unit="s",
               ratio=median([r["floor"] / r["bash"] for r in rounds]), goal="record", ok=None)
        result(f"iterations: {n} x /bin/true, ralph's own timestamps, first start to last end", ralph=per_ralph * 1000,
               baseline=per_bash * 1000, unit="ms/iteration", ratio=steady, goal="record", ok=None)


if __name__ == "__main__":
    main()
