"""A throwaway PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` from the folder
``pg_config --bindir`` names, in a temp folder, on 127.0.0.1 with a free port (and its Unix socket in
that folder), password auth over TCP. Run as the ``postgres`` user when the tests run as root
(PostgreSQL refuses root). Each test gets its own schema (``Server.database()``), so one server
serves the whole session; a test that stops the server starts its own (``Server.start()``).

With ``CI`` set, a machine without the server binaries fails the tests instead of skipping them."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PASSWORD = "ralph-test-secret"


def bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    found = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ralph-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = None if os.geteuid() != 0 else "postgres"
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)
        # The server lives past any one test: it must not carry the test's process marker.
        self.env = {k: v for k, v in os.environ.items() if k != "RALPH_TEST_MARK"}
        self.env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8")
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            os.chown(pwfile, pwd.getpwnam(self.user).pw_uid, -1)
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        pwfile.unlink()

    def _argv(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin / tool), *args]
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def _pg(self, tool: str, *args: str) -> None:
        proc = subprocess.run(self._argv(tool, *args), env=self.env, cwd=self.root, capture_output=True, text=True,
                              check=False, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        self._pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w",
                 "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def database(self) -> str:
        """A URL whose tables live in a new schema of their own (a test's private history)."""
        import psycopg

        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return f"{self.url}?options=-csearch_path%3D{schema}"


def server_or_skip() -> Server:
    found = bindir()
    if found is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        message = "psycopg is not installed: pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Server(found)


@contextlib.contextmanager
def running_server() -> Iterator[Server]:
    server = server_or_skip()
    try:
        server.start()
        yield server
    finally:
        server.remove()
