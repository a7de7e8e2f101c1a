"""What every benchmark shares: a scratch folder, the ralph command, wall time and peak RSS, results.

Each benchmark is a script that measures ralph and its baseline in the same run, alternating them
so that the noise of a shared 2-core machine hits both alike, and prints one ``RESULT`` JSON line per
goal for ``benchmarks/run`` to collect.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
_SCRIPT = Path(PY).parent / "ralph"
RALPH = [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-m", "ralph"]
# Bytecode as an installed package has it: the dev env sets PYTHONDONTWRITEBYTECODE and the editable
# tree has no __pycache__, so cache compiled modules in a scratch folder, never in the source tree.
PYCACHE = Path(tempfile.gettempdir()) / "ralph-bench-pycache"


def env(**extra: str) -> dict[str, str]:
    """The parent's env without anything that would change what ralph does (no OTEL_*, RALPH_*…)."""
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("RALPH_", "OTEL_", "OPENCODE_")) and k not in ("TRACEPARENT", "TRACESTATE")}
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out.pop("PYTHONUNBUFFERED", None)  # a user's ralph writes its lines buffered
    out["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    out.update(extra)
    return out


# Scratch folders live in the user's cache folder: on a disk as a user's ``.ralph`` is, not tmpfs;
# outside any git checkout (in one, every iteration would also take git snapshots: bench_git.py
# measures those); and away from /tmp, where a machine running test suites deletes
# thousands of files a minute. This VM's ext4 skips each inode freed in the last minutes when it
# hands out a new one (``recently_deleted()`` in a perf profile), so a folder and a file cost
# 0.4-0.9 ms there against ~0.05 ms elsewhere (and for the same reason no benchmark deletes a round's
# state before the next round: only at the end).
SCRATCH = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ralph-bench"


@contextlib.contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A scratch folder on the same disk as a real ``.ralph`` would be (not tmpfs, not /tmp)."""
    base = Path(os.environ.get("RALPH_BENCH_DIR") or SCRATCH)
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"ralph-bench-{name}-", dir=base))
    try:
        yield path
    finally:
        if not os.environ.get("RALPH_BENCH_KEEP"):  # benchmarks/run deletes them all once it is done
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Run:
    seconds: float
    maxrss_mib: float  # ru_maxrss of the process and the descendants it waited for
    cpu: float  # user + system seconds, the same processes: what a busy machine inflates least
    code: int
    stderr: str


def timed(argv: Sequence[str], *, env_: dict[str, str] | None = None, cwd: Path | None = None,
          stdout: int | None = subprocess.DEVNULL, check: bool = True) -> Run:
    """Wall time and peak RSS of one command, from spawn to reap."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env_ if env_ is not None else env(), cwd=cwd, stdout=stdout,
                                stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    if check and code != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} exited {code}:\n{text[-2000:]}")
    return Run(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, code, text)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def warm() -> None:
    """Fill the bytecode cache so the first measured run does not pay for compiling."""
    timed([*RALPH, "--help"])
    timed([PY, "-c", "import ralph.runner, ralph.views, ralph.telemetry, opentelemetry.sdk.trace"])


def db_rows(state_dir: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(state_dir / "ralph.db")) as db:
        return db.execute(sql, args).fetchall()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def result(name: str, *, ralph: float, baseline: float | None, unit: str, goal: str, ok: bool | None,
           ratio: float | None = None, **extra: object) -> None:
    """One goal's figure: printed for people, and as a RESULT line for ``benchmarks/run``."""
    verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
    base = "" if baseline is None else f"  baseline {baseline:.3f} {unit}"
    rat = "" if ratio is None else f"  ratio {ratio:.2f}"
    print(f"{name}: ralph {ralph:.3f} {unit}{base}{rat}  goal {goal}  {verdict}", flush=True)
    print("RESULT " + json.dumps({"name": name, "ralph": round(ralph, 4),
                                  "baseline": None if baseline is None else round(baseline, 4),
                                  "ratio": None if ratio is None else round(ratio, 3), "unit": unit,
                                  "goal": goal, "ok": ok, **extra}), flush=True)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def loop_file(folder: Path, name: str, command: Sequence[str], iterations: int, *, title: str | None = None,
              until: str = "", file: str = "loop.yaml") -> Path:
    """``folder/file``: ``command`` as the agent (exec'd, no shell) for ``iterations``; ``until``
    adds lines to the until: section."""
    # workdir: the scratch folder, outside any git checkout: these measure the loop, and benchmarks/run
    # starts in this repository, where every iteration would also take git snapshots (bench_git.py's job)
    head = f"name: {name}\nworkdir: .\n" + (f"title: '{title}'\n" if title else "")
    return write(folder / file, f"{head}agent:\n  command: {list(command)!r}\n"
                 f"until:\n  max_iterations: {iterations}\n{until}")
