"""Start-up: ``ralph --help`` and ``ralph validate`` median ≤ 250 ms; ``ralph run`` of a one-iteration
no-op loop ≤ 500 ms, the final trace flush included (the run only returns once traces.jsonl is
written). Baseline: the bare interpreter (``python -c pass``), for the ratio.
"""

from __future__ import annotations

import argparse
import shutil

from _bench import PY, RALPH, loop_file, median, result, scratch, timed, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    warm()
    with scratch("start") as tmp:
        loop = loop_file(tmp, "bench-start", ["/bin/true"], 1, title="start #{iteration}")
        state = tmp / "state"
        cases = {
            "ralph --help": [*RALPH, "--help"],
            "ralph validate": [*RALPH, "validate", str(loop)],
            "ralph run (1 no-op iteration)": [*RALPH, "run", str(loop), "--quiet", "--state-dir", str(state)],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        python: list[float] = []
        for _ in range(args.rounds):
            python.append(timed([PY, "-c", "pass"]).seconds)
            for name, argv in cases.items():
                shutil.rmtree(state, ignore_errors=True)  # a first run: the history is created too
                run = timed(argv)
                times[name].append(run.seconds)
                cpu[name].append(run.cpu)
                if "run" in name:
                    assert (state / "traces.jsonl").stat().st_size > 0, "the trace was not flushed"
        base = median(python)
        print(f"python -c pass: median {base * 1000:.0f} ms")
        for name, values in times.items():
            med = median(values)
            limit = 0.5 if "run" in name else 0.25
            print(f"{name}: median {med * 1000:.0f} ms (min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}), "
                  f"CPU median {median(cpu[name]) * 1000:.0f} ms")
            result(f"start-up: {name}", ralph=med * 1000, baseline=base * 1000, unit="ms", ratio=med / base,
                   goal=f"median <= {limit * 1000:.0f} ms", ok=med <= limit, cpu_ms=round(median(cpu[name]) * 1000))


if __name__ == "__main__":
    main()
