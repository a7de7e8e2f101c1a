"""The event helpers every preset's parser shares (ralph/agents/events.py)."""

from __future__ import annotations

from ralph.agents.events import int_sum, number, obj, tool_line

KEYS = ("command", "file_path", "path")


def test_tool_line_shows_the_first_key_given_as_text() -> None:
    assert tool_line("Bash", {"command": "pytest -x\nmore", "path": "p"}, keys=KEYS) == "→ Bash: $ pytest -x …"
    # an empty or non-text value is passed over; the keys' order decides, not the arguments'
    assert tool_line("Edit", {"path": "b.py", "command": "", "file_path": 3}, keys=KEYS) == "→ Edit: b.py"
    assert tool_line("Read", {"path": "x" * 250}, keys=KEYS) == f"→ Read: {'x' * 200} …"


def test_tool_line_falls_back_to_the_arguments_as_json_and_names_a_nameless_tool() -> None:
    assert tool_line("glob", {"glob": "*.py", "n": "é"}, keys=KEYS) == '→ glob: {"glob": "*.py", "n": "é"}'
    assert tool_line(None, "not an object", keys=KEYS) == "→ tool: {}"
    assert tool_line("", {"path": "a"}, keys=()) == '→ tool: {"path": "a"}'


def test_values_of_the_wrong_type_read_as_missing() -> None:
    assert obj({"a": 1}) == {"a": 1} and obj([1]) == {} and obj(None) == {}
    assert [number(v) for v in (1, 2.5, True, "3", None)] == [True, True, False, False, False]
    assert int_sum(1, 2.9, True, "4", None) == 3 and int_sum() is None and int_sum(None, False) is None
