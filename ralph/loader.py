"""Load a loop file: YAML nodes (for line numbers) -> plain data -> ``LoopFile`` -> ``LoopSpec``.

We compose the YAML ourselves instead of ``yaml.safe_load`` so that every key keeps its mark, duplicate
keys and tags are errors rather than silently resolved, and a pydantic error can name the key's line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ralph import hints
from ralph.config import LoopFile, Step
from ralph.errors import ConfigError, ConfigErrors

Loc = tuple[str | int, ...]
Mark = tuple[int, int]  # 1-based line, column

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null")}
_TIMESTAMP = _STD + "timestamp"
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_VALUES = 100_000  # aliases can make a small file expand without bound ("billion laughs")


@dataclass(frozen=True)
class LoopSpec:
    """A validated loop, with every path resolved: what the runner consumes."""

    path: Path
    config: LoopFile
    workdir: Path
    prompt: str | None
    marks: Mapping[Loc, Mark] = field(default_factory=dict, repr=False, compare=False)
    workdir_template: str | None = None  # `workdir` with {item}, absolute; `workdir` is then its parent folder

    def error(self, key: str, message: str) -> ConfigError:
        """A problem found after loading (a missing agent binary, an unreadable items file), still
        reported at the line of the key it concerns."""
        line, col = _locate(tuple(key.split(".")), self.marks)
        return ConfigError(message, self.path, line, col, key)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def title_template(self) -> str:
        if self.config.title is not None:
            return self.config.title
        return "{loop} {item} #{iteration}" if self.config.batch else "{loop} #{iteration}"

    def steps(self, kind: str) -> tuple[Step, ...]:
        return self.config.steps.before if kind == "before" else self.config.steps.after


class _Builder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.marks: dict[Loc, Mark] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._built = 0
        self._open: set[int] = set()  # collections being built: an alias back to one is a cycle

    def error(self, node: yaml.Node, message: str, loc: Loc = ()) -> ConfigError:
        mark = node.start_mark
        return ConfigError(message, self.path, mark.line + 1, mark.column + 1, dotted(loc) or None)

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self._built += 1
        if self._built > MAX_VALUES:
            raise self.error(node, f"the file expands to more than {MAX_VALUES} values (YAML aliases?)", loc)
        if isinstance(node, yaml.CollectionNode):
            if id(node) in self._open:
                raise self.error(node, "a YAML alias refers to the collection that contains it", loc)
            self._open.add(id(node))
            try:
                return self._build(node, loc)
            finally:
                self._open.discard(id(node))
        return self._build(node, loc)

    def _build(self, node: yaml.Node, loc: Loc) -> Any:
        self.marks.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            if node.tag != _STD + "map":
                raise self.error(node, f"YAML tags such as {node.tag} are not allowed", loc)
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _STD + "merge":
                    raise self.error(key_node, "YAML merge keys (<<) are not supported", loc)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                    raise self.error(key_node, "keys must be plain strings", loc)
                key = self._text(key_node, str(key_node.value), loc)
                child = (*loc, key)
                if key in out:
                    first = self.marks[child]
                    raise self.error(key_node, f"duplicate key (first defined on line {first[0]})", child)
                self.marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _STD + "seq":
                raise self.error(node, f"YAML tags such as {node.tag} are not allowed", loc)
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        if node.tag == _TIMESTAMP:
            return str(node.value)  # a date is text to us, never a datetime
        if node.tag not in _SCALAR_TAGS:
            raise self.error(node, f"YAML tags such as {node.tag} are not allowed", loc)
        try:
            value = self._constructor.construct_object(node, deep=True)
        except ValueError:  # an integer of thousands of digits
            raise self.error(node, "the number is too large", loc) from None
        return self._text(node, value, loc) if isinstance(value, str) else value

    def _text(self, node: yaml.Node, value: str, loc: Loc) -> str:
        """Text must be able to reach a child: as an env value, an argument or stdin."""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:  # "\ud83c\udf89" (JSON-style escapes of one character) is joined; a lone half is not text
                value = value.encode("utf-16", "surrogatepass").decode("utf-16")
            except UnicodeDecodeError:
                raise self.error(node, "the text contains an invalid character (a lone surrogate)", loc) from None
        if "\0" in value:
            raise self.error(node, "the text contains a NUL character", loc)
        return value


def dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError("the file is not valid UTF-8", path, line, col) from None
    return text.removeprefix("\ufeff")


def parse_yaml(path: Path, text: str) -> tuple[Any, dict[Loc, Mark]]:
    builder = _Builder(str(path))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply", path) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", path, line, col) from None
    except yaml.reader.ReaderError as exc:  # a control character: it has a position, not a mark
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"invalid YAML: character #x{char:04x} is not allowed", path, line, col) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path) from None
    if root is None:
        raise ConfigError("the file is empty; a loop needs at least `name` and `agent`", path)
    if not isinstance(root, yaml.MappingNode):
        raise builder.error(root, "the top level must be a mapping of keys such as name, agent, until")
    try:
        return builder.build(root, ()), builder.marks
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply", path) from None


def _locate(loc: Loc, marks: Mapping[Loc, Mark]) -> Mark:
    for end in range(len(loc), -1, -1):
        if loc[:end] in marks:
            return marks[loc[:end]]
    return (1, 1)


def _clean_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """Keep the parts of a pydantic location that exist in the data (dropping union branch names and
    '[key]'), plus one trailing unknown-or-missing key name."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            out.append(part)
            if part not in node:
                break
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            break
    return tuple(out)


def _message(err: dict[str, Any], loc: Loc = ()) -> str:
    msg = str(err["msg"])
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key" + hints.did_you_mean(LoopFile, loc)
    if kind == "missing":
        return "required key is missing"
    return msg.removeprefix("Value error, ")


def validation_errors(path: Path, exc: ValidationError, data: Any, marks: dict[Loc, Mark]) -> ConfigErrors:
    errors: list[ConfigError] = []
    seen: set[tuple[Loc, str]] = set()
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]), data)
        message = _message(dict(err), loc)
        if hints.is_quoting_mistake(err.get("type", ""), hints.value_at(data, loc)):
            message = hints.BOOLEAN  # once, not once per type of the union
        if (loc, message) in seen:
            continue  # a union reports once per branch; once is enough
        seen.add((loc, message))
        line, col = _locate(loc, marks)
        errors.append(ConfigError(message, path, line, col, dotted(loc) or None))
    errors.sort(key=lambda e: (e.line, e.col))
    return ConfigErrors(errors)


def load(path: str | os.PathLike[str], cwd: Path | None = None) -> LoopSpec:
    """Read, validate and resolve a loop file, or raise ConfigError. Writes nothing."""
    file = Path(path)
    try:
        if file.is_dir():
            raise ConfigError("is a folder, not a loop file", file)
        raw = _read_limited(file)
    except FileNotFoundError:
        raise ConfigError("no such file", file) from None
    except PermissionError:
        raise ConfigError("permission denied", file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError("the file is too large for a loop file", file)
    text = _decode(file, raw)
    data, marks = parse_yaml(file, text)
    try:
        config = LoopFile.model_validate(data)
    except ValidationError as exc:
        raise validation_errors(file, exc, data, marks) from None

    def fail(loc: Loc, message: str) -> ConfigError:
        line, col = _locate(loc, marks)
        return ConfigError(message, file, line, col, dotted(loc))

    nan = _not_a_number(config.model_dump())
    if nan:
        raise fail(nan[0], "must be a number (not .nan)")
    try:
        return replace(_resolve(file, config, cwd, fail), marks=marks)
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop ...
        raise ConfigError(f"cannot resolve a path of this loop: {getattr(exc, 'strerror', None) or exc}",
                          file) from None


def _read_limited(file: Path) -> bytes:
    """At most one byte more than a loop file may have (``/dev/zero`` is not a loop file)."""
    with open(file, "rb") as fh:
        return fh.read(MAX_FILE_BYTES + 1)


def _not_a_number(value: Any, loc: Loc = ()) -> list[Loc]:
    if isinstance(value, float) and value != value:
        return [loc]
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in _not_a_number(v, (*loc, k))]
    if isinstance(value, list | tuple):
        return [bad for i, v in enumerate(value) for bad in _not_a_number(v, (*loc, i))]
    return []


def _resolve(file: Path, config: LoopFile, cwd: Path | None, fail: Callable[[Loc, str], ConfigError]) -> LoopSpec:
    base = file.resolve().parent
    cwd = cwd or Path.cwd()
    workdir = (base / config.workdir).resolve() if config.workdir else cwd.resolve()
    template = None
    if config.workdir and "{item}" in config.workdir:  # each batch item in its own folder
        if config.batch is None:
            raise fail(("workdir",), "{item} in workdir needs a batch")
        template = str(base / config.workdir)
        prefix = config.workdir.split("{item}", 1)[0]
        workdir = (base / prefix).resolve() if prefix.endswith("/") else (base / prefix).parent.resolve()
    if not workdir.is_dir():
        raise fail(("workdir",), f"the folder {workdir} does not exist")
    _check_git(config, workdir, fail)
    prompt = config.agent.prompt
    if config.agent.prompt_file is not None:
        prompt_path = base / config.agent.prompt_file
        try:
            raw_prompt = _read_limited(prompt_path)
            if len(raw_prompt) > MAX_FILE_BYTES:
                raise ConfigError("the file is too large for a prompt")
            prompt = _decode(prompt_path, raw_prompt)
        except ConfigError as exc:
            raise fail(("agent", "prompt_file"), f"{prompt_path}: {exc.message}") from None
        except OSError as exc:
            raise fail(("agent", "prompt_file"), f"cannot read {prompt_path}: {exc.strerror}") from None
    if config.batch and config.batch.items_file is not None:
        items_path = base / config.batch.items_file
        if not items_path.is_file():
            raise fail(("batch", "items_file"), f"no such file: {items_path}")
    return LoopSpec(path=file, config=config, workdir=workdir, prompt=prompt, workdir_template=template)


def _check_git(config: LoopFile, workdir: Path, fail: Callable[[Loc, str], ConfigError]) -> None:
    """Keys that only mean something in a git work tree fail at their own line outside one."""
    wanted: list[Loc] = []
    if config.until.no_progress is not None:
        wanted.append(("until", "no_progress"))
    if config.batch is not None and config.batch.isolation == "worktree":
        wanted.append(("batch", "isolation"))
    if not wanted:
        return
    from ralph import git

    if git.find_repo(workdir) is None:
        raise fail(wanted[0], f"needs a git work tree, and {workdir} is not in one")
    if config.until.no_progress is not None and not config.git.snapshots:
        raise fail(("until", "no_progress"), "needs git snapshots, and git.snapshots is false")


def resolve_relative(spec: LoopSpec, name: str) -> Path:
    return spec.path.resolve().parent / name
