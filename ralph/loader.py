"""Load a loop file: YAML nodes (for line numbers) -> plain data -> ``LoopFile`` -> ``LoopSpec``.

We compose the YAML ourselves instead of ``yaml.safe_load`` so that every key keeps its mark, duplicate
keys and tags are errors rather than silently resolved, and a pydantic error can name the key's line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ralph.config import LoopFile, Step
from ralph.errors import ConfigError, ConfigErrors

Loc = tuple[str | int, ...]
Mark = tuple[int, int]  # 1-based line, column

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null")}
_TIMESTAMP = _STD + "timestamp"
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class LoopSpec:
    """A validated loop, with every path resolved: what the runner consumes."""

    path: Path
    config: LoopFile
    workdir: Path
    prompt: str | None

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

    def error(self, node: yaml.Node, message: str, loc: Loc = ()) -> ConfigError:
        mark = node.start_mark
        return ConfigError(message, self.path, mark.line + 1, mark.column + 1, dotted(loc) or None)

    def build(self, node: yaml.Node, loc: Loc) -> Any:
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
                key = str(key_node.value)
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
        return self._constructor.construct_object(node, deep=True)


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
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", path, line, col) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path) from None
    if root is None:
        raise ConfigError("the file is empty; a loop needs at least `name` and `agent`", path)
    if not isinstance(root, yaml.MappingNode):
        raise builder.error(root, "the top level must be a mapping of keys such as name, agent, until")
    return builder.build(root, ()), builder.marks


def _locate(loc: Loc, marks: dict[Loc, Mark]) -> Mark:
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


def _message(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    return msg.removeprefix("Value error, ")


def validation_errors(path: Path, exc: ValidationError, data: Any, marks: dict[Loc, Mark]) -> ConfigErrors:
    errors: list[ConfigError] = []
    seen: set[tuple[Loc, str]] = set()
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]), data)
        message = _message(dict(err))
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
        if file.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError("the file is too large for a loop file", file)
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", file) from None
    except PermissionError:
        raise ConfigError("permission denied", file) from None
    text = _decode(file, raw)
    data, marks = parse_yaml(file, text)
    try:
        config = LoopFile.model_validate(data)
    except ValidationError as exc:
        raise validation_errors(file, exc, data, marks) from None
    base = file.resolve().parent

    def fail(loc: Loc, message: str) -> ConfigError:
        line, col = _locate(loc, marks)
        return ConfigError(message, file, line, col, dotted(loc))

    cwd = cwd or Path.cwd()
    workdir = (base / config.workdir).resolve() if config.workdir else cwd.resolve()
    if not workdir.is_dir():
        raise fail(("workdir",), f"the folder {workdir} does not exist")
    prompt = config.agent.prompt
    if config.agent.prompt_file is not None:
        prompt_path = base / config.agent.prompt_file
        try:
            prompt = _decode(prompt_path, prompt_path.read_bytes())
        except ConfigError as exc:
            raise fail(("agent", "prompt_file"), f"{prompt_path}: {exc.message}") from None
        except OSError as exc:
            raise fail(("agent", "prompt_file"), f"cannot read {prompt_path}: {exc.strerror}") from None
    if config.batch and config.batch.items_file is not None:
        items_path = base / config.batch.items_file
        if not items_path.is_file():
            raise fail(("batch", "items_file"), f"no such file: {items_path}")
    return LoopSpec(path=file, config=config, workdir=workdir, prompt=prompt)


def resolve_relative(spec: LoopSpec, name: str) -> Path:
    return spec.path.resolve().parent / name
