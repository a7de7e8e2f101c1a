"""The span tree of a run or session, read back from ``traces.jsonl`` (OTLP JSON lines), so ``ralph
show`` can draw it with no tracing backend at all."""

from __future__ import annotations

import base64
import binascii
import json
import math
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

SLACK_S = 120.0  # a span reaches traces.jsonl a second or so after it ends


def _value(v: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _hex(value: str) -> str:
    """The JSON file exporter writes IDs as hex; tolerate base64 from other OTLP/JSON writers."""
    if value and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (ValueError, binascii.Error):
        return value


def _status(span: dict[str, Any]) -> str:
    code = (span.get("status") or {}).get("code")
    return {2: "error", "STATUS_CODE_ERROR": "error", 1: "ok", "STATUS_CODE_OK": "ok"}.get(code, "unset")


def _lines_with(fh: BinaryIO, needles: list[bytes], windows: list[tuple[float, float]] | None) -> Iterator[bytes]:
    """The lines holding any needle, in file order, only in the parts of the file written during
    ``windows`` (epoch seconds) when given. The mapped file is searched with ``find`` (C speed, no
    Python per line), so ``ralph show`` stays quick however big traces.jsonl grows."""
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        return
    with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as mm:
        merged: list[list[float]] = []
        for a, b in sorted(windows or []):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        ranges = ([(_offset(mm, size, a, False), _offset(mm, size, b, True)) for a, b in merged] if windows
                  else [(0, size)])
        done = 0  # every line starts and ends on a line start: no needle straddles a range's edge
        for first, stop in ranges:
            hits = {n: mm.find(n, max(first, done), stop) for n in needles}  # each needle's next hit
            while (live := [h for h in hits.values() if h >= 0]):
                start = mm.rfind(b"\n", 0, min(live)) + 1
                end = mm.find(b"\n", start)
                done = end = size if end < 0 else end + 1
                yield mm[start:end]
                for n, h in hits.items():
                    if 0 <= h < end:
                        hits[n] = mm.find(n, end, stop)
            done = max(done, stop)


_END = b'"endTimeUnixNano":"'


def _offset(mm: mmap.mmap, size: int, when: float, closing: bool) -> int:
    """Where the lines written at ``when`` start: lines are appended as spans end, so the file is in
    time order (roughly: batches, parallel writers). A bisection on each line's first end time; a
    line without one stays inside the window (``closing``: ``when`` is the window's end)."""
    if math.isinf(when):
        return 0 if when < 0 else size
    lo, hi, target = 0, size, int(when * 1e9)
    while lo < hi:
        start = max(lo, mm.rfind(b"\n", lo, (lo + hi) // 2) + 1)
        stop = mm.find(b"\n", start, hi)
        stop = hi if stop < 0 else stop + 1
        at = mm.find(_END, start, stop) + len(_END)
        quote = mm.find(b'"', at, stop) if at >= len(_END) else -1
        digits = mm[at:quote] if quote >= 0 else b""
        if int(digits) < target if digits.isdigit() else closing:
            lo = stop
        else:
            hi = start
    return lo


def read_spans(path: Path, trace_ids: Iterable[str],
               windows: list[tuple[float, float]] | None = None) -> Iterator[dict[str, Any]]:
    """Every span of these traces in the file (in the parts written during ``windows``, when given),
    as plain dicts with hex IDs and seconds."""
    wanted = {t for t in trace_ids if t}
    if not wanted or not path.exists():
        return
    needles = [t.encode() for t in wanted]
    with path.open("rb") as fh:
        for line in _lines_with(fh, needles, windows):  # most lines are other runs: never parse those
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            for rs in doc.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        trace_id = _hex(span.get("traceId", ""))
                        if trace_id not in wanted:
                            continue
                        yield {
                            "name": span.get("name"),
                            "trace_id": trace_id,
                            "span_id": _hex(span.get("spanId", "")),
                            "parent_id": _hex(span.get("parentSpanId", "")) or None,
                            "links": [_hex(link.get("spanId", "")) for link in span.get("links", [])],
                            "start": int(span.get("startTimeUnixNano", 0)) / 1e9,
                            "end": int(span.get("endTimeUnixNano", 0)) / 1e9,
                            "status": _status(span),
                            "status_message": (span.get("status") or {}).get("message") or None,
                            "attributes": {a["key"]: _value(a.get("value", {})) for a in span.get("attributes", [])},
                        }


def for_record(state_dir: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Spans of a run (its trace, and its sessions' own traces when each iteration roots one) or of a
    session (its iteration span and everything below it)."""
    trace_ids = [record.get("trace_id") or ""]
    trace_ids += [s.get("trace_id") or "" for s in record.get("sessions", [])]
    # Only read what was written while the record and its steps ran (each span is in the history);
    # if any of those spans is not there (a clock step, a stalled writer), read the whole file.
    rows = [record, *record.get("sessions", [])]
    rows += [step for row in rows for step in row.get("steps", [])]
    windows = [(r["started"] - SLACK_S, (r.get("ended") or math.inf) + SLACK_S) for r in rows if r.get("started")]
    spans = list(read_spans(state_dir / "traces.jsonl", trace_ids, windows or None))
    if not {r["span_id"] for r in rows if r.get("span_id") and r.get("ended")} <= {s["span_id"] for s in spans}:
        spans = list(read_spans(state_dir / "traces.jsonl", trace_ids))
    if record.get("kind") != "session":
        return sorted(spans, key=lambda s: s["start"])
    keep = {record.get("span_id")}
    changed = True
    while changed:
        changed = False
        for s in spans:
            if s["parent_id"] in keep and s["span_id"] not in keep:
                keep.add(s["span_id"])
                changed = True
    return sorted((s for s in spans if s["span_id"] in keep), key=lambda s: s["start"])


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _label(s: dict[str, Any]) -> str:
    a = s["attributes"]
    parts = [s["name"]]
    if s["name"] == "ralph.run":
        parts += [str(a.get("ralph.loop", "")), str(a.get("ralph.run_id", ""))]
    elif s["name"] == "ralph.iteration":
        parts += [f"#{a.get('ralph.iteration')}", str(a.get("session.id", ""))]
    elif s["name"] == "ralph.step":
        step = f"{a.get('ralph.step.kind')}:{a.get('ralph.step.name')}"
        parts.append(step if a.get("ralph.attempt", 1) == 1 else f"{step} attempt {a.get('ralph.attempt')}")
    if "ralph.outcome" in a:
        parts.append(str(a["ralph.outcome"]))
    if "process.exit.code" in a:
        parts.append(f"exit={a['process.exit.code']}")
    if s["status"] == "error":
        parts.append(f"ERROR({a['error.type']})" if "error.type" in a else "ERROR")
    return " ".join(p for p in parts if p)


def render(spans: list[dict[str, Any]]) -> list[str]:
    """One line per span, indented under its parent (or, for an iteration that roots its own trace,
    under the run span it links to): name, what it was, exit code, duration."""
    ids = {s["span_id"] for s in spans}
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in ids else next((x for x in s["links"] if x in ids), None)
        by_parent.setdefault(parent, []).append(s)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda x: x["start"]):
            lines.append(f"{'  ' * depth}{_label(s)}  {_duration(s['end'] - s['start'])}")
            walk(s["span_id"], depth + 1)

    walk(None, 0)
    return lines
