"""The ``ralph`` command line: thin typer commands that call plain functions returning exit codes.

Heavy modules (the runner, OpenTelemetry) are imported inside the commands so ``ralph --help``
stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ralph import __version__
from ralph.errors import guard

app = typer.Typer(
    name="ralph",
    help="Run an AI coding agent in a loop: one titled session per iteration, with the session's ID "
    "in every child's env, a history, logs and traces.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    # Plain help and usage errors: typer's Rich help pulls in rich.markdown and friends, ~75 ms on
    # every `ralph --help` (the start-up budget is 250 ms).
    rich_markup_mode=None,
)

StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="State folder (default: $RALPH_STATE_DIR, else ./.ralph).",
                 show_default=False),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", metavar="URL", help="History database, e.g. postgresql://USER@HOST/DB (default: "
                 "$RALPH_DATABASE_URL, else SQLite in the state folder).", show_default=False),
]
SessionOpt = Annotated[
    str | None,
    typer.Option("--session", help="Session ID or unique prefix (default: $RALPH_SESSION_ID, else the newest)."),
]


def _state(state_dir: Path | None, db: str | None = None) -> Path:
    from ralph.store import resolve_state_dir, use

    if db is not None:
        use(db)  # every history this command opens is there
    return resolve_state_dir(state_dir)


def _finish(code: int) -> None:
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ralph {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Ralph loops with session identity."""


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="The loop file (YAML).", show_default=False)],
    max_iterations: Annotated[int | None, typer.Option("--max-iterations", min=1,
                                                       help="Override until.max_iterations.")] = None,
    state_dir: StateDir = None,
    db: DbOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide the children's output.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per event on stdout.")] = False,
    item: Annotated[list[str] | None, typer.Option("--item", help="Run only this batch item (repeatable).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Run the I-th of N stable shards: I/N.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the newest interrupted, crashed or abandoned run of this loop: a new run "
        "(recorded as resumed from it) whose iterations number on from its last one; the iterations it finished "
        "count toward max_iterations. Without one, a new run starts.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write this run's HTML report to FILE, refreshed "
                                                "every few seconds while it runs.", show_default=False)] = None,
) -> None:
    """Run a loop."""
    from ralph import commands

    _finish(guard(lambda: commands.run(file, max_iterations, _state(state_dir, db), quiet, json_out, tuple(item or ()),
                                       shard, resume, report), lambda: _state(state_dir, db)))


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="The loop file (YAML).", show_default=False)]) -> None:
    """Check a loop file; print what is wrong with it, or nothing."""
    from ralph import commands

    _finish(guard(lambda: commands.validate(file)))


@app.command()
def sessions(
    loop: Annotated[str | None, typer.Option("--loop", help="Only this loop's sessions.")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's sessions (ID or prefix).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    commit: Annotated[str | None, typer.Option("--commit", help="The session during which this commit (SHA, "
                                               "full or short) was made.")] = None,
    state_dir: StateDir = None,
    db: DbOpt = None,
) -> None:
    """Session history, newest first."""
    from ralph import views

    _finish(guard(lambda: views.sessions(_state(state_dir, db), loop, run_id, limit, json_out, commit),
                  lambda: _state(state_dir, db)))


@app.command()
def show(
    ident: Annotated[str, typer.Argument(metavar="ID", help="A session or run ID (or unique prefix).")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    state_dir: StateDir = None,
    db: DbOpt = None,
) -> None:
    """A session or run: steps, exit codes, durations, trace, span tree."""
    from ralph import views

    _finish(guard(lambda: views.show(_state(state_dir, db), ident, json_out), lambda: _state(state_dir, db)))


@app.command()
def logs(
    session: Annotated[str, typer.Argument(metavar="SESSION", help="Session ID or unique prefix.")],
    step: Annotated[str | None, typer.Option("--step", help="Only this step (e.g. agent, check).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing while the session runs.")] = False,
    state_dir: StateDir = None,
    db: DbOpt = None,
) -> None:
    """What the session's children printed."""
    from ralph import views

    _finish(guard(lambda: views.logs(_state(state_dir, db), session, step, follow), lambda: _state(state_dir, db)))


@app.command()
def diff(
    session: Annotated[str, typer.Argument(metavar="SESSION", help="Session ID or unique prefix.")],
    paths: Annotated[list[str] | None, typer.Argument(metavar="[-- PATH...]", help="Only these paths.")] = None,
    stat: Annotated[bool, typer.Option("--stat", help="A diffstat instead of the patch.")] = False,
    state_dir: StateDir = None,
    db: DbOpt = None,
) -> None:
    """What the session changed in the working tree, as git's unified diff."""
    from ralph import changes

    _finish(guard(lambda: changes.diff(_state(state_dir, db), session, stat, list(paths or ())),
                  lambda: _state(state_dir, db)))


@app.command()
def restore(
    session: Annotated[str, typer.Argument(metavar="SESSION", help="Session ID or prefix (or a snapshot SHA).")],
    before: Annotated[bool, typer.Option("--before", help="The state before the session (default: after).")] = False,
    state_dir: StateDir = None,
    db: DbOpt = None,
) -> None:
    """Set the working tree to the snapshot after (or before) a session; prints how to undo it."""
    from ralph import changes

    _finish(guard(lambda: changes.restore(_state(state_dir, db), session, before), lambda: _state(state_dir, db)))


@app.command(context_settings={"allow_interspersed_args": False})
def exec(
    command: Annotated[list[str], typer.Argument(metavar="-- CMD...", help="The command and its arguments.")],
    session: SessionOpt = None,
    state_dir: StateDir = None,
    db: DbOpt = None,
) -> None:
    """Run CMD in that session's env, recorded as a step of it."""
    from ralph import sessiontools

    _finish(guard(lambda: sessiontools.exec_command(_state(state_dir, db), session, tuple(command)),
                  lambda: _state(state_dir, db)))


@app.command()
def shell(session: SessionOpt = None, state_dir: StateDir = None, db: DbOpt = None) -> None:
    """An interactive $SHELL in that session's env."""
    from ralph import sessiontools

    _finish(guard(lambda: sessiontools.shell(_state(state_dir, db), session), lambda: _state(state_dir, db)))


@app.command()
def env(
    session: SessionOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="sh (for eval) or json.")] = "sh",
    state_dir: StateDir = None,
    db: DbOpt = None,
) -> None:
    """The session env, for eval "$(ralph env)"."""
    from ralph import sessiontools

    _finish(guard(lambda: sessiontools.print_env(_state(state_dir, db), session, fmt),
                  lambda: _state(state_dir, db)))


@app.command()
def report(
    ident: Annotated[str | None, typer.Argument(metavar="[RUN_OR_BATCH_ID]", help="A run ID (or unique prefix) or a "
                                                "batch ID; default: the newest run, or its whole batch.")] = None,
    state_dir: Annotated[list[Path] | None, typer.Option(
        "--state-dir", help="State folder (repeatable: several are merged into one report; default: "
        "$RALPH_STATE_DIR, else ./.ralph).", show_default=False)] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Where to write it ('-': standard output; "
                                               "default: report.html, or standard output for md and json).",
                                               show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="html, md (for $GITHUB_STEP_SUMMARY) or json.")] = "html",
    trace_url: Annotated[str | None, typer.Option("--trace-url", help="Link trace IDs: a URL with {trace_id} in it.",
                                                  show_default=False)] = None,
    db: DbOpt = None,
) -> None:
    """One self-contained page of a run or batch: items, timeline, costs, changes, failed logs."""
    from ralph import report as reporting

    dirs = [_state(d, db) for d in state_dir] if state_dir else [_state(None, db)]
    _finish(guard(lambda: reporting.command(dirs, ident, output, fmt, trace_url), lambda: dirs[0]))


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write the starter loop.")] = Path("."),
    name: Annotated[str, typer.Option("--name", help="The loop's name.")] = "my-loop",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    preset: Annotated[str, typer.Option("--preset", help="The agent: command, opencode, claude, codex, gemini, "
                                        "copilot, qwen, pi, kilo or custom.")] = "command",
) -> None:
    """Scaffold a loop file and prompt that validate."""
    from ralph import commands

    _finish(guard(lambda: commands.init(directory, name, force, preset)))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the loop file."""
    from ralph import commands

    _finish(guard(commands.schema))


def main() -> NoReturn:
    """The console script: the typer app, which always ends in SystemExit, then a quick exit."""
    try:
        app()
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: object) -> NoReturn:
    """Exit without the interpreter's teardown: freeing the objects of the ~600 modules a run loads
    (pydantic, OpenTelemetry...) is 20-60 ms of every command, and ralph has already closed or
    flushed all it wrote. atexit handlers still run and stdout/stderr are flushed. While a
    non-daemon thread still runs, exit as usual, which waits for it."""
    import atexit
    import threading

    if code is None or isinstance(code, int):
        status = code or 0
    else:  # what SystemExit does with a message
        print(code, file=sys.stderr)
        status = 1
    if any(t.is_alive() and not t.daemon and t is not threading.main_thread() for t in threading.enumerate()):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (ralph sessions | head): nothing to tell
            stream.flush()
    os._exit(status)
