"""Install a pinned npm package once into the test cache and find the native binary it ships.

The agent CLIs the tests drive (opencode, Claude Code, Codex) are npm packages whose real program
is a self-contained native executable in a platform package (an optional dependency npm picks by
os/cpu/libc). :func:`ensure_npm_binary` installs ``PACKAGE@VERSION`` into
``$RALPH_TEST_CACHE/<name>-<version>`` (default ``~/.cache/ralph-tests``) with
``--ignore-scripts`` (the postinstall scripts only copy that executable into place), once, under an
``fcntl`` lock so parallel pytest processes don't race, in a staging folder renamed into place when
complete; ``ralph-<name>.json`` in the folder records the binary for the next caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["CLAUDE_CODE_VERSION", "CODEX_VERSION", "NpmUnavailable", "binary_version", "cache_dir", "ensure_claude",
           "ensure_codex", "ensure_npm_binary", "node_platform"]


class NpmUnavailable(RuntimeError):
    """The package could not be installed (no npm, no registry, no binary for this platform...)."""


def cache_dir() -> Path:
    root = os.environ.get("RALPH_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ralph-tests")
    return Path(root)


def node_platform() -> tuple[str, str]:
    """(os, arch) as npm platform packages name them: ("linux", "x64"), ("darwin", "arm64")..."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    machine = platform.machine().lower()
    return system, {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def binary_version(binary: Path) -> str | None:
    """What ``BINARY --version`` prints (stripped), run with a scratch HOME; None if it fails."""
    with tempfile.TemporaryDirectory(prefix="ralph-version-home-") as home:
        try:
            p = subprocess.run([str(binary), "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=60, env={**os.environ, "HOME": home})
        except (OSError, subprocess.TimeoutExpired):
            return None
    # Most print it on stdout; pi prints it on stderr.
    return (p.stdout.strip() or p.stderr.strip()) if p.returncode == 0 else None


def _accepted(candidates: Iterable[Path], version: str) -> Path | None:
    for binary in candidates:
        if binary.is_file() and version in (binary_version(binary) or ""):
            return binary
    return None


def _read_marker(marker: Path, version: str) -> Path | None:
    try:
        data = json.loads(marker.read_text())
        binary = Path(data["binary"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("version") == version and binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


def ensure_npm_binary(
    package: str,
    version: str,
    candidates: Callable[[Path], Iterable[Path]],
    *,
    name: str,
    error: type[Exception] = NpmUnavailable,
) -> Path:
    """Install ``package@version`` (once per cache folder) and return its native executable.

    ``candidates(prefix)`` lists where the executable may be under the install folder, best first;
    the first whose ``--version`` output contains ``version`` wins. Raises ``error`` when it can't.
    """
    root = cache_dir()
    prefix = root / f"{name}-{version}"
    marker_name = f"ralph-{name}.json"
    binary = _read_marker(prefix / marker_name, version)
    if binary:
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise error(f"npm is not on PATH: cannot install {package}")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        binary = _read_marker(prefix / marker_name, version)  # someone else finished while we waited
        if binary:
            return binary
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=root))
        os.chmod(staging, 0o755)
        try:
            (staging / "package.json").write_text(json.dumps(
                {"name": f"ralph-test-{name}", "private": True, "dependencies": {package: version}}))
            cmd = [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-package-lock",
                   "--loglevel=error"]
            started = time.monotonic()
            try:
                p = subprocess.run(cmd, cwd=staging, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=900, env={**os.environ, "npm_config_update_notifier": "false"})
            except subprocess.TimeoutExpired as e:
                raise error(f"npm install {package}@{version} timed out") from e
            if p.returncode != 0:
                raise error(f"npm install {package}@{version} failed (exit {p.returncode}):\n"
                            f"{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
            if _accepted(candidates(staging), version) is None:
                raise error(f"npm installed {package}@{version} but no working binary for this platform among "
                            f"{[str(c) for c in candidates(staging)]}")
            if prefix.exists():
                shutil.rmtree(prefix)  # a broken earlier attempt
            os.rename(staging, prefix)
            binary = _accepted(candidates(prefix), version)
            assert binary is not None
            (prefix / marker_name).write_text(json.dumps(
                {"version": version, "binary": str(binary), "install_seconds": round(time.monotonic() - started, 1)}))
            return binary
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def cpu_has_avx2() -> bool:
    with contextlib.suppress(OSError):
        return " avx2" in Path("/proc/cpuinfo").read_text()
    return False


# -- the agent CLIs the preset tests drive (pinned: their flags and events were checked with these) --

CLAUDE_CODE_VERSION = "2.1.332"
CODEX_VERSION = "0.169.0"


def ensure_claude() -> Path:
    """``@anthropic-ai/claude-code``: the native ``claude`` of its platform package (no node needed)."""
    system, arch = node_platform()
    return ensure_npm_binary(
        "@anthropic-ai/claude-code", CLAUDE_CODE_VERSION,
        lambda prefix: [prefix / "node_modules" / "@anthropic-ai" / f"claude-code-{system}-{arch}{libc}" / "claude"
                        for libc in ("", "-musl")],
        name="claude-code")


def ensure_codex() -> Path:
    """``@openai/codex``: the native ``codex`` (a static musl build) of its platform package."""
    system, arch = node_platform()
    return ensure_npm_binary(
        "@openai/codex", CODEX_VERSION,
        lambda prefix: sorted((prefix / "node_modules" / "@openai" / f"codex-{system}-{arch}" / "vendor").glob(
            "*/bin/codex")),
        name="codex")


# Node CLIs: the npm package is a bundle run by node (Node 20 here); `.bin/NAME` is its launcher.
GEMINI_CLI_VERSION = "0.61.0"
QWEN_CODE_VERSION = "0.15.10"  # the newest that runs on Node 20 (later ones need Node 22)


def ensure_gemini() -> Path:
    """``@google/gemini-cli``: ``gemini``, a node bundle."""
    return ensure_npm_binary("@google/gemini-cli", GEMINI_CLI_VERSION,
                             lambda prefix: [prefix / "node_modules" / ".bin" / "gemini"], name="gemini-cli")


def ensure_qwen() -> Path:
    """``@qwen-code/qwen-code``: ``qwen``, a node bundle."""
    return ensure_npm_binary("@qwen-code/qwen-code", QWEN_CODE_VERSION,
                             lambda prefix: [prefix / "node_modules" / ".bin" / "qwen"], name="qwen-code")
