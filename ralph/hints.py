"""Friendlier words for common loop-file mistakes: a misspelt key, a YAML boolean where text was
meant, a batch item with a control character (it would break the console's ``[item …]`` prefix)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel


def control_character(text: str) -> str | None:
    """The first control character of ``text``, escaped for a message; None if there is none."""
    for char in text:
        if ord(char) < 32 or 127 <= ord(char) < 160:
            return repr(char)[1:-1]
    return None


def check_item(value: str) -> str:
    """A batch item is printed in labels and titles: one line of printable text."""
    bad = control_character(value)
    if bad is not None:
        raise ValueError(f"a batch item may not contain a control character ({bad})")
    return value


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The record type inside ``X``, ``X | None``, ``tuple[X, ...]`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def did_you_mean(root: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    """`` (did you mean "command"?)`` for an unknown key at ``loc``, or nothing."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    if model is None or not loc or not isinstance(loc[-1], str):
        return ""
    import difflib  # only for a file with a mistake in it

    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def value_at(data: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        inside = (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data))
        if not inside:
            return None
        data = data[part]
    return data


BOOLEAN = "a YAML boolean (true/false, yes/no, on/off) where text is expected: put the value in quotes"
_TEXT_ERRORS = {"string_type", "tuple_type", "list_type"}


def is_quoting_mistake(err_type: str, value: Any) -> bool:
    return isinstance(value, bool) and err_type in _TEXT_ERRORS
