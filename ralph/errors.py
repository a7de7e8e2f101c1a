"""Errors, and the one place that maps them to exit codes.

Config and usage errors exit 2 (nothing ran), runtime failures 1, interrupts 130/143, and an
unexpected exception 3 with its traceback in ``ralph-crash.log``.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CRASH = 3


class RalphError(Exception):
    """An expected failure with a message for the user."""

    exit_code = EXIT_FAILED


class ConfigError(RalphError):
    """A bad loop file: rendered as ``PATH:LINE:COL: key: message``."""

    exit_code = EXIT_USAGE

    def __init__(
        self, message: str, path: str | os.PathLike[str] | None = None, line: int = 1, col: int = 1,
        key: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line, self.col, self.key, self.message = line, col, key, message
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{_printable(self.path)}:{self.line}:{self.col}: " if self.path else ""
        key = f"{_printable(self.key)}: " if self.key else ""
        return f"{where}{key}{_printable(self.message)}"


def _printable(text: str) -> str:
    """One line per problem, whatever the file holds: control characters are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigErrors(ConfigError):
    """Several problems in one file, all reported at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, first.path, first.line, first.col, first.key)

    def render(self) -> str:
        return "\n".join(e.render() for e in getattr(self, "errors", [])) or super().render()


class UsageError(RalphError):
    exit_code = EXIT_USAGE


class StateError(RalphError):
    """The state folder cannot be used (unwritable, disk full, corrupt)."""


class Interrupted(RalphError):  # a name that reads well at the raise sites
    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, RalphError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return EXIT_CRASH


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def write_crash_log(exc: BaseException, state_dir: Path | None) -> Path | None:
    """Keep the traceback for the bug report; the console gets one line."""
    from datetime import datetime

    from ralph import __version__

    header = f"--- {datetime.now().isoformat(timespec='seconds')} ralph {__version__}: {' '.join(sys.argv)}\n"
    text = header + "".join(traceback.format_exception(exc))
    for folder in ([state_dir] if state_dir else []) + [Path.cwd() / ".ralph"]:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / "ralph-crash.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8", errors="replace") as fh:
                fh.write(text + "\n")
            return path
        except OSError:
            continue
    return None


def _state_dir_or_none(state_dir: Callable[[], Path | None]) -> Path | None:
    try:
        return state_dir()
    except Exception:
        return None


def guard(fn: Callable[[], int], state_dir: Callable[[], Path | None] = lambda: None) -> int:
    """Run a command body and turn whatever it raises into an exit code and one message
    (a config error may list several problems, one per line)."""
    try:
        return fn()
    except RalphError as exc:
        msg = exc.render() if isinstance(exc, ConfigError) else f"ralph: {_one_line(str(exc))}"
        if msg.strip():
            print(msg, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ralph: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except OSError as exc:
        # Disk full, permissions and the like: a runtime failure the user can act on.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ralph: {where}{_one_line(exc.strerror or str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        log = write_crash_log(exc, _state_dir_or_none(state_dir))
        hint = f" (traceback in {log})" if log else ""
        print(f"ralph: internal error: {type(exc).__name__}: {_one_line(str(exc))}{hint}", file=sys.stderr)
        return EXIT_CRASH
