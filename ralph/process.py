"""Child processes: a ``Request`` goes in, an ``Outcome`` comes out.

Every child runs in its own process group, so a timeout or an interrupt can end the whole tree
(SIGINT, SIGTERM, SIGKILL, ``grace`` seconds apart) and nothing it started outlives the step.
stdout and stderr share one pipe so the log keeps their order; output is streamed in chunks to the
log file and to ``on_output`` as it arrives, never held whole in memory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ralph.errors import StateError
from ralph.interrupt import CancelToken, never
from ralph.pids import GRACE, boot_ticks, reap_group, signal_group

CHUNK = 1 << 20
_F_SETPIPE_SZ = 1031  # Linux: a bigger pipe means fewer wake-ups for chatty children
_PIPE_SIZE = 1 << 16  # Linux's default
PIDFD_AFTER = 0.1  # seconds a child runs before ralph watches its exit apart from its pipe


@dataclass(frozen=True)
class Request:
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(repr=False)
    stdin: bytes | None = field(default=None, repr=False)
    timeout: float | None = None
    idle_timeout: float | None = None
    deadline: float | None = None  # time.monotonic() after which the step is out of time
    log_path: Path | None = None
    grace: float = GRACE


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | failed | timeout | interrupted | error
    exit_code: int
    pid: int | None
    started: float  # epoch seconds
    duration: float
    signal: int | None = None
    reason: str | None = None  # why it was ended, or why it could not start
    log_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def shell_argv(command: str | tuple[str, ...]) -> tuple[str, ...]:
    """A string runs under /bin/sh -c; a list is exec'd as is. Never interpolated."""
    return ("/bin/sh", "-c", command) if isinstance(command, str) else tuple(command)


def private_dirs(folder: Path) -> None:
    """mkdir -p where every folder it creates is 0700 (``Path.mkdir(parents=True)`` would make the
    parents 0755). The folder itself first: its parent is there nearly always (one call, no walk)."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        if folder.parent == folder:
            raise
        private_dirs(folder.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)


_folders = threading.local()  # the session folder this thread last made (or found), per thread


def _open_log(path: Path | None) -> int | None:
    if path is None:
        return None
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    folder = path.parent
    try:
        if getattr(_folders, "last", None) != folder:  # a session's first step: its folder is made first
            private_dirs(folder)
            _folders.last = folder
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:  # removed since
            private_dirs(folder)
            return os.open(path, flags, 0o600)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Stopper:
    """Escalates SIGINT -> SIGTERM -> SIGKILL to a process group, ``grace`` seconds apart."""

    def __init__(self, pgid: int, grace: float) -> None:
        self.pgid, self.grace = pgid, grace
        self.reason: str | None = None
        self.killed = False
        self.plan: list[int] = []
        self.next_at = float("inf")

    def start(self, reason: str, now: float, first: int = signal.SIGINT) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        order: list[int] = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
        self.plan = order[order.index(first):]
        self.next_at = now
        self.step(now)

    def kill_now(self, now: float) -> None:
        self.plan = [signal.SIGKILL]
        self.next_at = now
        self.step(now)

    def step(self, now: float) -> None:
        if self.plan and now >= self.next_at:
            sig = self.plan.pop(0)
            self.killed = self.killed or sig == signal.SIGKILL
            signal_group(self.pgid, sig)
            self.next_at = now + self.grace if self.plan else float("inf")


class _Poller:
    """``select.poll`` with a tag per file descriptor: unlike an epoll selector it has no descriptor of
    its own to make and close for every child (five system calls a child)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._tags: dict[int, str] = {}

    def register(self, fd: int, tag: str, write: bool = False) -> None:
        self._poll.register(fd, select.POLLOUT if write else select.POLLIN)
        self._tags[fd] = tag

    def unregister(self, fd: int) -> None:
        self._poll.unregister(fd)
        del self._tags[fd]

    def select(self, timeout: float) -> list[tuple[int, str]]:
        """Ready descriptors (a hang-up or an error counts: the read or write then says what it is)."""
        return [(fd, self._tags[fd]) for fd, _ in self._poll.poll(timeout * 1000) if fd in self._tags]


def _spawn_error(request: Request, exc: OSError, log_fd: int | None, on_output: Callable[[bytes], None] | None,
                 started: float) -> Outcome:
    if not request.cwd.is_dir():
        reason = f"the working folder {request.cwd} does not exist"
    else:
        reason = f"cannot run {request.argv[0]}: {exc.strerror or exc}"
    message = f"ralph: {reason}\n".encode()
    if log_fd is not None:
        with contextlib.suppress(OSError):
            _write_all(log_fd, message)
    if on_output is not None:
        on_output(message)
    code = 127 if isinstance(exc, FileNotFoundError) else 126
    return Outcome("error", code, None, started, 0.0, reason=reason)


@functools.lru_cache(maxsize=64)
def _resolved(name: str, path: str | None) -> str | None:
    """Where ``name`` is on ``path``, looked up once per run as bash's command hash does: the child
    would otherwise try execve in every folder of PATH before the right one, while the spawning
    thread waits (~40 us a spawn with a dozen folders)."""
    for folder in (path if path is not None else os.defpath).split(os.pathsep):
        if not os.path.isabs(folder):  # a relative folder is the child's, after its chdir: let it look
            return None
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return None


def _executable(argv0: str, env: Mapping[str, str]) -> str | None:
    if os.sep in argv0:  # a path: exec'd as given
        return None
    return _resolved(argv0, env.get("PATH"))


@functools.cache
def _devnull() -> int:
    """One /dev/null for every child's stdin (Popen would open and close one per child)."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _popen(request: Request) -> subprocess.Popen[bytes]:
    env = dict(request.env)

    def spawn(executable: str | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            request.argv, executable=executable, cwd=request.cwd, env=env,
            stdin=subprocess.PIPE if request.stdin is not None else _devnull(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, bufsize=0,
        )

    executable = _executable(request.argv[0], env)
    try:
        return spawn(executable)
    except FileNotFoundError:
        if executable is None or not request.cwd.is_dir():
            raise
        _resolved.cache_clear()  # it was removed or moved since: the child looks, as bash does then
        return spawn(None)


def run(
    request: Request,
    on_output: Callable[[bytes], None] | None = None,
    cancel: CancelToken | None = None,
    on_start: Callable[[int, str], None] | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> Outcome:
    """``on_start`` is told the child's PID and start time (``boot_ticks``) once it runs. ``meanwhile``
    is work that waited for a child to run (``ralph.meanwhile``), done before the log is opened."""
    cancel = cancel or never()
    started, t0, born = time.time(), time.monotonic(), boot_ticks()
    try:
        proc = _popen(request)
    except OSError as exc:
        if meanwhile is not None:
            meanwhile()
        log_fd = _open_log(request.log_path)
        try:
            return _spawn_error(request, exc, log_fd, on_output, started)
        finally:
            if log_fd is not None:
                os.close(log_fd)
    return _supervise(proc, request, on_output, cancel, started, t0, born, on_start, meanwhile)


def _supervise(
    proc: subprocess.Popen[bytes], request: Request,
    on_output: Callable[[bytes], None] | None, cancel: CancelToken, started: float, t0: float, born: str,
    on_start: Callable[[int, str], None] | None = None, meanwhile: Callable[[], None] | None = None,
) -> Outcome:
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()  # left blocking: it is read only when poll says there is data (or EOF)
    pipe_grown = False  # made bigger once the child fills it: every system call costs a batch's GIL hand-off
    sel = _Poller()
    sel.register(out_fd, "out")
    sel.register(cancel.fd, "cancel")
    # A pidfd wakes the loop when the child exits while something it started still holds the pipe.
    # Opened only for a child still running after PIDFD_AFTER: most short ones close the pipe as they
    # exit, and the two system calls are two GIL hand-offs for each of a wide batch's children.
    pidfd: int | None = None
    pidfd_at = t0 + PIDFD_AFTER if hasattr(os, "pidfd_open") else None
    stdin_view: memoryview | None = None
    if request.stdin is not None and proc.stdin is not None:
        stdin_view = memoryview(request.stdin)
        os.set_blocking(proc.stdin.fileno(), False)
        if stdin_view:
            sel.register(proc.stdin.fileno(), "in", write=True)
        else:
            proc.stdin.close()

    stopper = _Stopper(proc.pid, request.grace)
    log_error: str | None = None
    last_output = t0
    out_open, exited_at = True, None
    limits = [
        (t0 + request.timeout, "timeout") if request.timeout else None,
        (request.deadline, "timeout") if request.deadline else None,
    ]
    log_fd: int | None = None
    try:
        # The log is opened (its session folder made) while the child starts: its output waits in the
        # pipe meanwhile. Inside the try, as the history's row: a child that cannot be recorded is ended.
        if meanwhile is not None:
            meanwhile()
        log_fd = _open_log(request.log_path)
        if on_start is not None:
            on_start(proc.pid, born)
        while out_open or proc.returncode is None:
            now = time.monotonic()
            if pidfd_at is not None and now >= pidfd_at:
                pidfd_at = None
                if proc.returncode is None:  # once reaped, its PID may be another process's
                    with contextlib.suppress(OSError):  # an old kernel: the loop looks every 50 ms instead
                        pidfd = os.pidfd_open(proc.pid)
                        sel.register(pidfd, "exit")
            if cancel.cancelled:
                stopper.start("interrupted", now)
                stopper.reason = "interrupted"  # the user's word wins over a timeout in progress
                if cancel.urgent and not stopper.killed:
                    stopper.kill_now(now)
            for limit in limits:
                if limit and now >= limit[0]:
                    stopper.start(limit[1], now)
            if request.idle_timeout and now - last_output >= request.idle_timeout:
                stopper.start("idle timeout", now)
            if exited_at is not None and out_open and now - exited_at > 0.2:
                # The child is gone but something it started holds the pipe: end the group.
                stopper.start("orphans", now, first=signal.SIGTERM)
            stopper.step(now)

            wake = [stopper.next_at - now]
            wake += [lim[0] - now for lim in limits if lim]
            if request.idle_timeout:
                wake.append(last_output + request.idle_timeout - now)
            if pidfd_at is not None:
                wake.append(pidfd_at - now)
            if (pidfd is None and pidfd_at is None) or cancel.cancelled or exited_at is not None:
                wake.append(0.05)
            for fd, tag in sel.select(max(0.0, min([*wake, 1.0]))):
                if tag == "out":
                    try:
                        data = os.read(out_fd, CHUNK)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(out_fd)
                        out_open = False
                        continue
                    last_output = time.monotonic()
                    if not pipe_grown and len(data) >= _PIPE_SIZE:
                        pipe_grown = True
                        with contextlib.suppress(OSError):
                            fcntl.fcntl(out_fd, _F_SETPIPE_SZ, CHUNK)
                    if len(data) == CHUNK:
                        _reuse_chunk_memory()
                    if log_fd is not None and log_error is None:
                        try:
                            _write_all(log_fd, data)
                        except OSError as exc:
                            log_error = f"cannot write {request.log_path}: {exc.strerror}"
                    if on_output is not None:
                        on_output(data)
                elif tag == "in":
                    assert proc.stdin is not None and stdin_view is not None
                    try:
                        stdin_view = stdin_view[os.write(proc.stdin.fileno(), stdin_view[:65536]):]
                    except BlockingIOError:
                        continue
                    except OSError as exc:  # the child closed its stdin; the rest is not wanted
                        if exc.errno not in (errno.EPIPE, errno.EBADF):
                            raise
                        stdin_view = stdin_view[:0]
                    if not stdin_view:
                        sel.unregister(proc.stdin.fileno())
                        proc.stdin.close()
                elif tag == "cancel":
                    sel.unregister(cancel.fd)  # level-triggered: handled via cancel.cancelled above
                elif tag == "exit":
                    sel.unregister(fd)
            if proc.returncode is None and proc.poll() is not None:
                exited_at = time.monotonic()
            elif not out_open and pidfd_at is not None:
                # Its pipe closed as it exits, a moment before the kernel makes it a zombie (or it closed
                # its output and runs on): watch its exit now, not after PIDFD_AFTER.
                pidfd_at = now
    finally:
        if log_fd is not None:
            os.close(log_fd)
        if pidfd is not None:
            os.close(pidfd)
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        proc.stdout.close()
        if proc.returncode is None:  # we are unwinding from an error: leave nothing behind
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    reap_group(proc.pid, request.grace, cancel)

    code = proc.returncode
    sig = -code if code < 0 else None
    exit_code = 128 + sig if sig else code
    reason = stopper.reason if stopper.reason != "orphans" else None
    if reason == "interrupted":
        status = "interrupted"
    elif reason in ("timeout", "idle timeout"):
        status = "timeout"
    else:
        status = "ok" if exit_code == 0 else "failed"
    return Outcome(status, exit_code, proc.pid, started, time.monotonic() - t0, sig, reason, log_error)


@functools.cache  # once per process
def _reuse_chunk_memory() -> None:
    """A chatty child makes ralph allocate and free a CHUNK-sized bytes object per read. glibc serves
    blocks that big with mmap and unmaps them on free, so every chunk faults in a fresh megabyte:
    about a tenth of the streaming time. Serving them from the heap reuses the same pages. Done once,
    and only for a child that fills whole chunks (other runs never load ctypes)."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        mallopt(-3, 4 * CHUNK)  # M_MMAP_THRESHOLD: below this, blocks come from the heap
        mallopt(-1, 16 * CHUNK)  # M_TRIM_THRESHOLD: free heap kept instead of handed back each time
    except (OSError, AttributeError):
        pass  # not glibc: the default behaviour is only slower
