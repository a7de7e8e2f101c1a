"""Install and drive the real ``opencode`` CLI in tests (see docs/opencode-notes.md).

- :func:`ensure_opencode` installs ``opencode-ai@OPENCODE_VERSION`` with npm into
  ``$RALPH_TEST_CACHE/opencode-<version>`` (default ``~/.cache/ralph-tests``), once, under an
  ``fcntl`` lock so parallel pytest processes don't race, and returns the path of the
  platform binary (``node_modules/opencode-<os>-<arch>[-baseline][-musl]/bin/opencode``), a
  self-contained executable that doesn't need node at run time.
- :func:`opencode_env` makes an isolated opencode home (XDG dirs + HOME) with a config that
  points a provider at a scripted OpenAI-compatible server.
- :func:`run_opencode`, :func:`import_session`, :func:`parse_events` drive the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.npm import NpmUnavailable, cache_dir, cpu_has_avx2, ensure_npm_binary, node_platform

OPENCODE_VERSION = "1.18.33"
PACKAGE = "opencode-ai"

__all__ = [
    "OPENCODE_VERSION",
    "OpencodeUnavailable",
    "cache_dir",
    "ensure_opencode",
    "import_session",
    "opencode_env",
    "parse_events",
    "project_id",
    "run_opencode",
]


class OpencodeUnavailable(NpmUnavailable):
    """opencode could not be installed (no npm, no registry, ...)."""


# -- installation (the shared npm installer, tests/support/npm.py) ---------------------------


def _candidate_packages() -> list[str]:
    """Platform packages of opencode-ai, best first (mirrors the package's postinstall.mjs)."""
    system, arch = node_platform()
    base = f"opencode-{system}-{arch}"
    if arch != "x64":
        return [base, f"{base}-musl"]
    names = [base, f"{base}-baseline"] if cpu_has_avx2() else [f"{base}-baseline", base]
    return names + [f"{n}-musl" for n in names]


def ensure_opencode() -> Path:
    """Install opencode (once per cache dir) and return the path of its executable.

    Idempotent and safe against concurrent callers (see :func:`tests.support.npm.ensure_npm_binary`).
    Raises :class:`OpencodeUnavailable` when it can't.
    """
    return ensure_npm_binary(
        PACKAGE,
        OPENCODE_VERSION,
        lambda prefix: [prefix / "node_modules" / name / "bin" / "opencode" for name in _candidate_packages()],
        name="opencode",
        error=OpencodeUnavailable,
    )


# -- isolated environment -----------------------------------------------------------------


def seed_plugin_install(config_dir: Path) -> None:
    """Make opencode skip its background ``npm install @opencode-ai/plugin`` in ``config_dir``.

    On every start opencode 1.18.33 "installs" ``@opencode-ai/plugin@<version>`` into each
    config folder it reads (``$XDG_CONFIG_HOME/opencode``, ``.opencode`` folders) unless the
    folder has a ``node_modules`` and a ``package-lock.json`` whose root lists that package.
    Unseeded, each run queries the npm registry and, if it lives long enough, downloads ~64 MB
    of packages into the folder, catching SIGHUP/SIGINT/SIGTERM meanwhile.
    """
    (config_dir / "node_modules").mkdir(parents=True, exist_ok=True)
    lock = config_dir / "package-lock.json"
    if not lock.exists():
        lock.write_text(
            json.dumps(
                {
                    "name": "opencode",
                    "lockfileVersion": 3,
                    "requires": True,
                    "packages": {"": {"dependencies": {"@opencode-ai/plugin": OPENCODE_VERSION}}},
                },
                indent=2,
            )
        )


def opencode_env(
    tmp_path: Path,
    base_url: str,
    model: str = "scripted/scripted-model",
    *,
    cost: tuple[float, float] | None = (3.0, 15.0),
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Create an isolated opencode home under ``tmp_path/opencode-home`` and return the env
    additions (XDG dirs, HOME, flags) that make ``opencode`` use it. ``os.environ`` is not
    touched.

    The config (``$XDG_CONFIG_HOME/opencode/opencode.json``) declares provider ``PROVIDER``
    (from ``model`` = ``PROVIDER/MODEL``) with the bundled ``@ai-sdk/openai-compatible`` SDK
    pointed at ``base_url``, makes ``model`` the default, allows bash, and turns off
    autoupdate and sharing. ``cost`` is USD per million (input, output) tokens, so that
    step_finish events report a non-zero cost.
    """
    provider_id, _, model_id = model.partition("/")
    if not provider_id or not model_id:
        raise ValueError(f"model must look like provider/model, got {model!r}")
    home = Path(tmp_path) / "opencode-home"
    dirs = {
        "XDG_DATA_HOME": home / "data",
        "XDG_CONFIG_HOME": home / "config",
        "XDG_CACHE_HOME": home / "cache",
        "XDG_STATE_HOME": home / "state",
        "HOME": home / "home",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    model_cfg: dict[str, Any] = {"name": f"Scripted {model_id}"}
    if cost is not None:
        model_cfg["cost"] = {"input": cost[0], "output": cost[1]}
    config: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            provider_id: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Scripted test LLM",
                "options": {"baseURL": base_url, "apiKey": "test-key"},
                "models": {model_id: model_cfg},
            }
        },
        "model": model,
        "small_model": model,
        "permission": {"bash": "allow", "edit": "allow"},
        "autoupdate": False,
        "share": "disabled",
    }
    if extra_config:
        config.update(extra_config)
    cfg_dir = dirs["XDG_CONFIG_HOME"] / "opencode"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "opencode.json").write_text(json.dumps(config, indent=2))
    seed_plugin_install(cfg_dir)
    env = {k: str(v) for k, v in dirs.items()}
    env.update(
        {
            "OPENCODE_DISABLE_MODELS_FETCH": "1",  # no models.dev download
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_SHARE": "1",
        }
    )
    return env


# -- driving the CLI ----------------------------------------------------------------------


def run_opencode(
    binary: Path | str,
    env: Mapping[str, str],
    workdir: Path | str,
    args: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``opencode ARGS`` in ``workdir`` with ``os.environ`` (less any ``OPENCODE_*``) + ``env``.

    ``PWD`` is set to ``workdir``: opencode takes its working directory from ``$PWD`` when it
    is set, not from the real cwd. Standard input is /dev/null unless ``input`` is given
    (``opencode run`` reads stdin to EOF when it is not a TTY; an open pipe hangs it).
    """
    workdir = str(workdir)
    # Drop opencode settings inherited from the developer's shell (e.g. OPENCODE_CONFIG_CONTENT
    # when pytest itself runs under opencode): only what ``env`` says counts.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE_")}
    full_env = {**inherited, **env, "PWD": workdir}
    return subprocess.run(
        [str(binary), *args],
        cwd=workdir,
        env=full_env,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_events(stdout: str) -> list[dict[str, Any]]:
    """The JSON events that ``opencode run --format json`` printed, one per line."""
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def project_id(workdir: Path | str) -> str:
    """The projectID opencode 1.18.33 gives sessions made in ``workdir``.

    Walk up to the first ``.git``; none: ``"global"``. Else the content of ``.git/opencode``
    if present (opencode caches it there), else the smallest root-commit hash of HEAD
    (``git rev-list --max-parents=0 HEAD``, sorted), else (no commits) ``"global"``.
    """
    d = Path(workdir).resolve()
    for cand in (d, *d.parents):
        dotgit = cand / ".git"
        if dotgit.exists():
            break
    else:
        return "global"
    cached = dotgit / "opencode"
    if cached.is_file() and cached.read_text().strip():
        return cached.read_text().strip()
    p = subprocess.run(
        ["git", "rev-list", "--max-parents=0", "HEAD"],
        cwd=cand,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    roots = sorted(x.strip() for x in p.stdout.splitlines() if x.strip()) if p.returncode == 0 else []
    return roots[0] if roots else "global"


def import_session(
    binary: Path | str,
    env: Mapping[str, str],
    workdir: Path | str,
    session_id: str,
    title: str,
    *,
    timeout: float = 60,
) -> dict[str, Any]:
    """Create session ``session_id`` titled ``title`` in opencode's store, attached to the
    project of ``workdir``, via ``opencode import FILE``. Returns the document imported.

    opencode ignores the file's ``projectID``/``directory``: it sets them from the directory
    the command runs in (``$PWD``), so this runs in ``workdir``. Importing an ID that exists
    does NOT change its title (only project, directory and path are updated).
    """
    now = int(time.time() * 1000)
    doc = {
        "info": {
            "id": session_id,
            "slug": "ralph-" + session_id[-8:].lower(),
            "projectID": project_id(workdir),
            "directory": str(Path(workdir).resolve()),
            "title": title,
            "version": OPENCODE_VERSION,
            "time": {"created": now, "updated": now},
        },
        "messages": [],
    }
    fd, path = tempfile.mkstemp(prefix="opencode-import-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        p = run_opencode(binary, env, workdir, ["import", path], timeout=timeout)
    finally:
        os.unlink(path)
    if p.returncode != 0 or f"Imported session: {session_id}" not in p.stdout:
        raise RuntimeError(f"opencode import failed (exit {p.returncode}):\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return doc
