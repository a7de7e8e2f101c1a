"""The trace file's helper process (a parallel batch's spans encoded on the other core): the same lines
as the in-process exporter writes, nothing lost when the helper or ralph dies, none started for a batch
too short to need it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.json.file.trace_exporter import FileSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from ralph import tracewriter
from ralph.tracefile import WhileChildrenRun, cached_resource
from tests.helpers import PY, write_loop, yaml_list

RESOURCE = cached_resource(Resource.create({"service.name": "ralph-test", "host.name": "here"}))


def made_spans(count: int = 6) -> list[Any]:
    """Real SDK spans with everything the encoder reads: events, links, a remote parent, trace state,
    an error status, attributes of every type."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("ralph", "1.2.3")
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "v1")]))
    parent_ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    for i in range(count):
        with tracer.start_as_current_span(f"ralph.step {i}", context=parent_ctx, kind=SpanKind.CLIENT,
                                          links=[Link(remote, {"why": "resumed"})]) as span:
            span.set_attributes({"ralph.iteration": i, "ratio": 0.5, "ok": i % 2 == 0, "name": "é ✓",
                                 "list": ["a", "b"], "ints": [1, 2]})
            span.add_event("exit", {"code": 3}, timestamp=1_700_000_000_000_000_000 + i)
            with tracer.start_as_current_span("child"):
                pass
            if i % 3 == 0:
                span.set_status(Status(StatusCode.ERROR, "it failed"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def spans_in(path: Path) -> list[dict[str, Any]]:
    return [s for line in lines(path) for rs in line["resourceSpans"] for ss in rs["scopeSpans"]
            for s in ss["spans"]]


def appending(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def writer_on(path: Path) -> tuple[tracewriter.Writer, int, Any]:
    fd = appending(path)
    stream = os.fdopen(fd, "a", encoding="utf-8")
    return tracewriter.Writer(fd, RESOURCE, lambda: FileSpanExporter(stream=stream)), fd, stream


def test_the_helper_writes_the_same_lines_as_the_exporter_in_process(tmp_path: Path) -> None:
    made = made_spans()
    mine, theirs = tmp_path / "helper.jsonl", tmp_path / "inline.jsonl"
    writer, _, stream = writer_on(mine)
    writer.export(made[:4])
    writer.export(made[4:])
    assert writer._proc is not None  # the helper did the writing
    writer.shutdown()
    stream.close()
    with theirs.open("a", encoding="utf-8") as inline:
        exporter = FileSpanExporter(stream=inline)
        exporter.export(made[:4])
        exporter.export(made[4:])
    assert lines(mine) == lines(theirs)
    assert len(spans_in(mine)) == len(made) == 12


def test_force_flush_returns_once_the_file_has_every_span(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    writer, _, stream = writer_on(path)
    made = made_spans(3)
    writer.export(made)
    assert writer.force_flush()
    assert len(spans_in(path)) == len(made)
    # through the span processor too: what waits there is handed over, then the helper answers
    processor = WhileChildrenRun(writer, min_batch=1000)
    for span in made:
        processor.on_end(span)
    assert processor.force_flush()
    assert len(spans_in(path)) == 2 * len(made)
    writer.shutdown()
    stream.close()


def test_when_the_helper_dies_ralph_writes_the_rest_itself(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    writer, _, stream = writer_on(path)
    made = made_spans(4)
    writer.export(made[:2])
    assert writer.force_flush()
    assert writer._proc is not None
    writer._proc.kill()
    writer._proc.wait()
    writer.export(made[2:])  # the pipe is broken: in-process from here
    writer.export(made[2:4])
    assert writer._proc is None
    writer.shutdown()
    stream.close()
    assert len(spans_in(path)) == len(made) + 2  # made[2:4] twice


def test_a_writer_closed_before_any_spans_starts_no_helper(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    writer, _, stream = writer_on(path)
    writer.closing()
    writer.export(made_spans(1))
    assert writer._proc is None
    writer.shutdown()
    stream.close()
    assert len(spans_in(path)) == 2


KILLED = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from tests.test_tracewriter import made_spans, writer_on
    writer, fd, stream = writer_on(Path(sys.argv[1]))
    writer.export(made_spans(5))
    print(writer._proc.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_spans_handed_over_are_written_even_if_ralph_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", KILLED, str(path), root], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    try:
        helper = os.pidfd_open(int(proc.stdout.strip()))
    except ProcessLookupError:
        helper = None  # done already
    if helper is not None:  # it ends once its pipe does: wait for that, not for a while
        assert select.select([helper], [], [], 30)[0], "the helper did not end"
        os.close(helper)
    assert len(spans_in(path)) == 10


# The agent looks for the helper among its parent's children and says whether it saw it.
SEES_HELPER = textwrap.dedent("""
    import os, pathlib, sys
    seen = False
    for entry in os.scandir("/proc"):
        try:
            stat = pathlib.Path(f"/proc/{entry.name}/stat").read_text()
            cmdline = pathlib.Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == os.getppid() and b"ralph.tracewriter" in cmdline.split(b"\\0"):
            seen = True
    pathlib.Path(sys.argv[1], os.environ["RALPH_ITEM"]).write_text(str(seen))
""")


@pytest.mark.parametrize(("parallel", "shadowed", "one_core"),
                         [(1, False, False), (4, False, False), (4, True, False), (4, False, True)])
def test_a_batch_writes_every_items_spans_with_or_without_the_helper(tmp_path: Path, isolated: Path, parallel: int,
                                                                     shadowed: bool, one_core: bool) -> None:
    """``shadowed``: the working folder has a ``ralph/`` of its own; the helper still runs this ralph.
    ``one_core``: ralph may run on one CPU only, where a helper would only take turns with it."""
    if shadowed:
        (tmp_path / "ralph").mkdir()
        (tmp_path / "ralph" / "__init__.py").write_text("raise SystemExit('not this ralph')\n")
    items = [f"svc-{i}" for i in range(16)]
    (tmp_path / "seen").mkdir()
    loop = write_loop(tmp_path, textwrap.dedent(f"""
        name: traced
        title: "t {{item}} #{{iteration}}"
        agent: {{command: {yaml_list([PY, "-c", SEES_HELPER, str(tmp_path / "seen")])}}}
        until: {{max_iterations: 1}}
        batch: {{items: {json.dumps(items)}, parallel: {parallel}}}
    """))
    argv = [PY, "-P", "-m", "ralph", "run", str(loop), "--quiet"]
    if one_core:
        argv = [PY, "-c", "import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
                "os.execv(sys.argv[1], sys.argv[1:])", *argv]
    result = subprocess.run(argv, cwd=tmp_path, text=True, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "not this ralph" not in result.stderr
    found = spans_in(isolated / "traces.jsonl")
    by_id = {s["spanId"]: s for s in found}
    assert [s["name"] for s in found].count("ralph.run") == 1 and len(found) == 1 + 2 * len(items)
    for span in found:  # one trace, every parent in the file
        assert span.get("parentSpanId") is None or span["parentSpanId"] in by_id
    resource = lines(isolated / "traces.jsonl")[0]["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "ralph"}} in resource
    seen = {p.name: p.read_text() for p in (tmp_path / "seen").iterdir()}
    assert sorted(seen) == sorted(items)
    # parallel: the helper starts with the first spans; one at a time or on one core: ralph encodes them
    assert ("True" in seen.values()) == (parallel > 1 and not one_core), seen
