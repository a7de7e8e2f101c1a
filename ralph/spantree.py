"""The span tree of a run or session, read back from ``traces.jsonl`` (OTLP JSON lines)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
    import base64

    try:
        return base64.b64decode(value).hex()
    except ValueError:
        return value


def read_spans(path: Path, trace_id: str) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    needle = trace_id.encode()
    with path.open("rb") as fh:
        for line in fh:
            if needle not in line:  # cheap filter before parsing: most lines are other runs
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            for rs in doc.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        if _hex(span.get("traceId", "")) != trace_id:
                            continue
                        yield {
                            "name": span.get("name"),
                            "trace_id": trace_id,
                            "span_id": _hex(span.get("spanId", "")),
                            "parent_id": _hex(span.get("parentSpanId", "")) or None,
                            "start": int(span.get("startTimeUnixNano", 0)) / 1e9,
                            "end": int(span.get("endTimeUnixNano", 0)) / 1e9,
                            "status": (span.get("status") or {}).get("code"),
                            "attributes": {a["key"]: _value(a.get("value", {})) for a in span.get("attributes", [])},
                        }


def for_record(state_dir: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Spans of a run (its whole trace) or of a session (its iteration span and below)."""
    trace_id = record.get("trace_id")
    if not trace_id:
        return []
    spans = list(read_spans(state_dir / "traces.jsonl", trace_id))
    if record.get("kind") != "session":
        return spans
    root = record.get("span_id")
    keep = {root}
    changed = True
    while changed:
        changed = False
        for s in spans:
            if s["parent_id"] in keep and s["span_id"] not in keep:
                keep.add(s["span_id"])
                changed = True
    return [s for s in spans if s["span_id"] in keep]


def render(spans: list[dict[str, Any]]) -> list[str]:
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in ids else None
        by_parent.setdefault(parent, []).append(s)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda x: x["start"]):
            a = s["attributes"]
            label = s["name"]
            if s["name"] == "ralph.iteration":
                label += f" #{a.get('ralph.iteration')} {a.get('session.id')}"
            elif s["name"] == "ralph.step":
                label += f" {a.get('ralph.step.kind')}:{a.get('ralph.step.name')}"
                if a.get("ralph.attempt", 1) != 1:
                    label += f" attempt {a.get('ralph.attempt')}"
            if "process.exit.code" in a:
                label += f" exit={a['process.exit.code']}"
            if s.get("status") in ("STATUS_CODE_ERROR", 2):
                label += " ERROR"
            lines.append(f"{'  ' * depth}{label}  {max(0.0, s['end'] - s['start']) * 1000:.1f}ms")
            walk(s["span_id"], depth + 1)

    walk(None, 0)
    return lines
