"""The speed-ups of issue 7 change how, not what: each fast path is checked against the plain version
it replaced (kept here as the reference), and the mirrored output of a real run is checked whole.
Timings live in benchmarks/, never here."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import PY, ralph, write_loop, yaml_list
from ralph import spantree
from ralph.console import MAX_PENDING, Console, LineSplitter
from ralph.session import Session


class ReferenceSplitter:
    """LineSplitter as it was: glue the pending bytes to the chunk, then cut at the last newline."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self.pending:
            data = self.pending + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self.pending = b"" if len(data) > MAX_PENDING else data
            return [data] if not self.pending else []
        lines = data[:cut].split(b"\n")
        self.pending = data[cut + 1:]
        if len(self.pending) > MAX_PENDING:
            lines.append(self.pending)
            self.pending = b""
        return lines


def reference_text(prefix: str, lines: list[bytes]) -> str:
    return "\n".join(prefix + line.decode("utf-8", "replace").rstrip("\r") for line in lines) + "\n"


BYTES = st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\xe2\x82\xac", b"\xe2\x82", b"\xff", b"", b"x" * 7]),
                 max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(BYTES, max_size=12), big=st.sampled_from([0, MAX_PENDING - 1, MAX_PENDING + 5]))
def test_line_splitter_cuts_lines_as_before(chunks: list[bytes], big: int) -> None:
    chunks = [*chunks, b"y" * big, *chunks]  # also the bounded pending path
    new, old = LineSplitter(), ReferenceSplitter()
    for chunk in chunks:
        assert new.feed(chunk) == old.feed(chunk)
    assert new.pending == old.pending


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(BYTES, min_size=1, max_size=30), item=st.sampled_from([None, "api", "wéb"]))
def test_mirrored_lines_are_the_same_text_as_line_by_line(lines: list[bytes], item: str | None) -> None:
    out = io.StringIO()
    session = Session("ses_x", "t", "run_x", "loop", 3, item, Path("/x"))
    Console(out=out).output_lines(session, "agent", lines)
    assert out.getvalue() == reference_text(f"[{item + ' ' if item else ''}3 agent] ", lines)


def test_mirroring_a_big_output_prints_every_line_once_with_its_prefix(tmp_path: Path) -> None:
    # Lines of every length, one far longer than the slices the output is split in, no final newline.
    script = ("import sys; w = sys.stdout.write\n"
              "for i in range(3000): w(f'line {i} ' + 'é' * (i % 97) + '\\n')\n"
              "w('L' * 200000 + '\\n'); w('tail')\n")
    loop = write_loop(tmp_path, f"""
        name: mirror
        agent:
          command: {yaml_list([PY, "-c", script])}
        until:
          max_iterations: 1
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stderr
    shown = [line[len("[1 agent] "):] for line in result.stdout.splitlines() if line.startswith("[1 agent] ")]
    assert shown[-1].startswith("ok, exit 0")  # the step's end line
    assert shown[:3000] == [f"line {i} " + "é" * (i % 97) for i in range(3000)]
    assert "".join(shown[3000:-1]) == "L" * 200000 + "tail"  # a line over 64 KiB may come in pieces


def _write_lines(path: Path, lines: list[bytes], newline_at_end: bool) -> None:
    path.write_bytes(b"\n".join(lines) + (b"\n" if newline_at_end else b""))


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.sampled_from([b"aa", b"bb", b"aabb", b"cc", b"", b"xaax"]), max_size=12),
       needles=st.lists(st.sampled_from([b"aa", b"bb", b"zz"]), min_size=1, max_size=3, unique=True),
       newline_at_end=st.booleans())
def test_span_lines_are_found_as_by_reading_every_line(tmp_path_factory: object, lines: list[bytes],
                                                     needles: list[bytes], newline_at_end: bool) -> None:
    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"  # type: ignore[attr-defined]
    _write_lines(path, lines, newline_at_end)
    with path.open("rb") as fh:
        expected = [line for line in fh if any(n in line for n in needles)]
    with path.open("rb") as fh:
        assert list(spantree._lines_with(fh, needles, None)) == expected


def _span_line(trace: str, span: str, end: float, parent: str = "", name: str = "ralph.step") -> bytes:
    ns = str(int(end * 1e9))
    span_doc = {"traceId": trace, "spanId": span, "parentSpanId": parent, "name": name,
                "startTimeUnixNano": ns, "endTimeUnixNano": ns}
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span_doc]}]}]}
    return json.dumps(doc, separators=(",", ":")).encode()  # compact, as the file exporter writes


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.floats(0, 50), min_size=1, max_size=40), traces=st.data(),
       window=st.tuples(st.floats(-20, 900), st.floats(0, 400)))
def test_a_time_window_reads_exactly_the_lines_written_in_it(tmp_path_factory: object, gaps: list[float],
                                                           traces: st.DataObject, window: tuple[float, float]) -> None:
    ends, t = [], 0.0
    for gap in gaps:  # a file in time order, as the exporter appends it
        t += gap
        ends.append(t)
    owners = [traces.draw(st.sampled_from(["aa" * 16, "bb" * 16])) for _ in ends]
    lines = [_span_line(o, f"{i:016x}", e) for i, (o, e) in enumerate(zip(owners, ends, strict=True))]
    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"  # type: ignore[attr-defined]
    _write_lines(path, lines, True)
    a, b = window[0], window[0] + window[1]
    with path.open("rb") as fh:
        found = list(spantree._lines_with(fh, [b"aa" * 16], [(a, b)]))
    assert found == [line + b"\n" for line, o, e in zip(lines, owners, ends, strict=True)
                     if o == "aa" * 16 and int(a * 1e9) <= int(e * 1e9) < int(b * 1e9)]


def _session_record() -> dict[str, object]:
    return {"kind": "session", "trace_id": "aa" * 16, "span_id": "01" * 8, "started": 5000.0, "ended": 5060.0,
            "steps": [{"span_id": "02" * 8, "started": 5001.0, "ended": 5050.0},
                      {"span_id": "03" * 8, "started": 5050.0, "ended": 5059.0}]}


def test_show_reads_a_session_from_its_time_window_and_falls_back_to_the_whole_file(tmp_path: Path) -> None:
    mine = [_span_line("aa" * 16, "02" * 8, 5050.0, "01" * 8), _span_line("aa" * 16, "03" * 8, 5059.0, "01" * 8),
            _span_line("aa" * 16, "01" * 8, 5060.0, "ff" * 8, "ralph.iteration")]
    others = [_span_line("aa" * 16, f"{i:016x}", 100.0 * i, "ff" * 8) for i in range(1, 200)]  # same run
    path = tmp_path / "traces.jsonl"
    spaced = [line.replace(b'":"', b'": "') for line in others]  # another writer's style: no times to read
    # In time order; written out of order; times that cannot be read.
    for layout in (others[:50] + mine + others[50:], mine + others, spaced[:50] + mine + spaced[50:]):
        _write_lines(path, layout, True)
        spans = spantree.for_record(tmp_path, _session_record())
        assert sorted(s["span_id"] for s in spans) == ["01" * 8, "02" * 8, "03" * 8]
