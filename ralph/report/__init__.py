"""``ralph report``: runs and batches as one self-contained HTML page, a Markdown summary or JSON.

``gather`` reads the histories into plain records (``model``); ``render`` turns them into text;
``live`` keeps a run's page fresh while it goes (``ralph run --report FILE``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ralph.errors import UsageError

FORMATS = ("html", "md", "json")


def check_trace_url(template: str | None) -> None:
    if template is None:
        return
    if "{trace_id}" not in template:
        raise UsageError(f"--trace-url {template!r}: put {{trace_id}} where the trace ID goes")
    if not template.startswith(("http://", "https://")):
        raise UsageError(f"--trace-url {template!r}: give an http:// or https:// URL")


def command(state_dirs: list[Path], ident: str | None, output: str | None, fmt: str, trace_url: str | None) -> int:
    """The command: the report of ``ident`` (else the newest batch or run) written to ``output``:
    ``report.html`` for HTML, standard output for Markdown and JSON (``-`` is standard output)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    check_trace_url(trace_url)
    from ralph.report.gather import gather

    data = gather(state_dirs, ident)
    target = output or ("report.html" if fmt == "html" else "-")
    if target == "-":
        sys.stdout.write(text(data, fmt, Path.cwd(), trace_url))
        sys.stdout.flush()
        return 0
    path = Path(target)
    write(path, text(data, fmt, path.resolve().parent, trace_url))
    print(f"ralph: wrote {path} ({data.kind} {data.ident}: {len(data.items)} item(s), "
          f"{len(data.sessions)} session(s))", file=sys.stderr)
    return 0


def text(data: object, fmt: str, base: Path, trace_url: str | None = None) -> str:
    from ralph.report import model, render

    assert isinstance(data, model.Report)
    if fmt == "md":
        return render.markdown(data)
    if fmt == "json":
        return render.as_json(data)
    return render.html(data, base, trace_url)


def write(path: Path, content: str) -> None:
    """Whole or not at all: a browser reloading the page mid-write must not see half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(content)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
