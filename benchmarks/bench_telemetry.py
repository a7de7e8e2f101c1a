"""Telemetry off the hot path: a run of 150 no-op iterations with an OTLP endpoint that is dead, vs the
same run with only the embedded traces.jsonl, back to back in each round. Goal: a dead endpoint adds
≤ 2 s to the whole run (the median of the rounds' differences).

Dead three ways: nothing listening (connection refused), a listener that never answers (the
exporter waits for its timeout), the same over gRPC. With an endpoint set, spans, metrics and the
run's log records all try to go there. Also checks that span export is batched (several spans per
line of traces.jsonl, not one write per span).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket

from _bench import RALPH, env, loop_file, median, result, scratch, timed, warm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    n = args.iterations
    warm()
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4096)
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
    variants = {
        "file only (baseline)": {},
        "refused (http/protobuf)": {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
        "never answers (http/protobuf)": {"OTEL_EXPORTER_OTLP_ENDPOINT": mute},
        "never answers (grpc)": {"OTEL_EXPORTER_OTLP_ENDPOINT": mute, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    }
    with scratch("otel") as tmp:
        loop = loop_file(tmp, "bench-otel", ["/bin/true"], n)
        state = tmp / "state"
        times: dict[str, list[float]] = {name: [] for name in variants}
        warned: dict[str, bool] = {}
        lines = spans = 0
        for _ in range(args.rounds):
            for name, extra in variants.items():
                shutil.rmtree(state, ignore_errors=True)
                run = timed([*RALPH, "run", str(loop), "--quiet", "--state-dir", str(state)], env_=env(**extra))
                times[name].append(run.seconds)
                warned[name] = "warning" in run.stderr
                if not extra:
                    docs = [json.loads(x) for x in (state / "traces.jsonl").read_text().splitlines()]
                    lines = len(docs)
                    spans = sum(len(ss["spans"]) for d in docs for rs in d["resourceSpans"]
                                for ss in rs["scopeSpans"])
        silent.close()
        base_runs = times["file only (baseline)"]
        base = median(base_runs)
        print(f"{n} iterations, file only: {', '.join(f'{v:.3f}' for v in base_runs)} s; traces.jsonl: {spans} "
              f"spans in {lines} lines ({spans / max(lines, 1):.0f} spans per export)")
        # A single loop writes 4 spans a line (two fast iterations: their encoding fits in a short child's run).
        assert spans >= 2 * n + 1 and lines <= spans / 3, "span export is not batched"
        for name, values in times.items():
            if name.startswith("file"):
                continue
            added = median([v - b for v, b in zip(values, base_runs, strict=True)])
            print(f"{name}: {', '.join(f'{v:.3f}' for v in values)} s; one warning on stderr: {warned[name]}")
            result(f"telemetry: dead OTLP endpoint, {name}", ralph=added, baseline=base, unit="s added",
                   goal="<= 2 s added", ok=added <= 2.0, run_s=round(median(values), 3))

if __name__ == "__main__":
    main()
