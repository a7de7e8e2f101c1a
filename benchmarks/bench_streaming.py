"""Output streaming: an agent printing 400 MiB of 100-byte lines, the promise last, vs the same output
piped through ``cat`` into a file. Goals: the step log holds all of it, the promise is seen (exit 0,
session ``complete``), throughput ≥ 0.9x cat's best of 3 interleaved rounds (issue 18; the median is
printed too), ralph's peak RSS ≤ 100 MiB. Console mirroring
(no ``--quiet``, stdout to /dev/null) is measured and recorded too.

Throughput is judged on the agent step as ralph times it (spawn to the log's last byte and the
child's exit); the end-to-end figure, start-up and trace flush included, is printed next to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from _bench import HERE, PY, RALPH, db_rows, loop_file, median, result, scratch, timed, warm


def ralph_once(loop: Path, state: Path, quiet: bool, size: int) -> tuple[float, float, float]:
    """(end-to-end seconds, agent step seconds, peak RSS MiB) of one checked run."""
    shutil.rmtree(state, ignore_errors=True)
    os.sync()  # start every run with no dirty pages from the one before (writeback is not ralph's)
    argv = [*RALPH, "run", str(loop), "--state-dir", str(state)] + (["--quiet"] if quiet else [])
    run = timed(argv)
    (status,), = db_rows(state, "SELECT status FROM sessions")
    (step_s, log_path), = db_rows(state, "SELECT ended - started, log_path FROM steps WHERE name = 'agent'")
    log = Path(str(log_path))
    assert status == "complete", status
    assert log.stat().st_size == size, (log.stat().st_size, size)
    with log.open("rb") as fh:
        fh.seek(-100, 2)
        assert fh.read().startswith(b"<promise>COMPLETE</promise>")
    return run.seconds, float(step_s), run.maxrss_mib  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    flood = [PY, str(HERE / "_flood.py"), str(args.mib)]
    warm()
    with scratch("stream") as tmp:
        loop = loop_file(tmp, "bench-stream", flood, 1, until="  output_contains: '<promise>COMPLETE</promise>'\n")
        out = tmp / "cat.out"
        cat_s, quiet, mirror = [], [], []
        for _ in range(args.rounds):
            out.unlink(missing_ok=True)
            os.sync()
            cat_s.append(timed(["sh", "-c", f"{subprocess.list2cmdline(flood)} | cat > {out}"]).seconds)
            assert out.stat().st_size == size
            out.unlink()
            quiet.append(ralph_once(loop, tmp / "state", True, size))
            mirror.append(ralph_once(loop, tmp / "state", False, size))
        c = median(cat_s)
        q_e2e, q_step = median([r[0] for r in quiet]), median([r[1] for r in quiet])
        m_e2e, m_step = median([r[0] for r in mirror]), median([r[1] for r in mirror])
        q_rss, m_rss = max(r[2] for r in quiet), max(r[2] for r in mirror)
        mib = args.mib
        print(f"cat: {', '.join(f'{s:.3f}' for s in cat_s)} s -> {mib / c:.0f} MiB/s")
        for label, runs in (("ralph --quiet", quiet), ("ralph mirroring", mirror)):
            print(f"{label}: step {', '.join(f'{r[1]:.3f}' for r in runs)} s; end to end "
                  f"{', '.join(f'{r[0]:.3f}' for r in runs)} s; peak RSS {max(r[2] for r in runs):.1f} MiB")
        best_c, best_q = min(cat_s), min(r[1] for r in quiet)
        print(f"median of the rounds: ralph {mib / q_step:.0f} MiB/s, cat {mib / c:.0f} MiB/s, ratio {c / q_step:.2f}")
        result("streaming: 400 MiB, --quiet (throughput, best of 3)", ralph=mib / best_q, baseline=mib / best_c,
               unit="MiB/s", ratio=best_c / best_q, goal=">= 0.9x cat", ok=best_c / best_q >= 0.9,
               median_ratio=round(c / q_step, 3), end_to_end_s=round(q_e2e, 3), end_to_end_ratio=round(c / q_e2e, 3))
        result("streaming: 400 MiB, --quiet (peak RSS)", ralph=q_rss, baseline=None, unit="MiB",
               goal="<= 100 MiB", ok=q_rss <= 100)
        result("streaming: 400 MiB, mirrored to stdout (throughput)", ralph=mib / m_step, baseline=mib / c,
               unit="MiB/s", ratio=c / m_step, goal="record", ok=None, end_to_end_s=round(m_e2e, 3),
               peak_rss_mib=round(m_rss, 1))


if __name__ == "__main__":
    main()
