"""The ``custom`` preset wiring a real agent CLI in YAML: Gemini CLI (npm, pinned) described by
``agent.custom`` alone (argv with placeholders, JSON-lines pointers, streamed text deltas) against
the scripted Gemini API, driven by a real ``ralph run``; what the gemini preset does in code, done
by the loop file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import ralph, write_loop
from tests.support.agent_probe import probes
from tests.support.node_agents import gemini_env, node_probe
from tests.support.npm import ensure_gemini
from tests.support.preset_runs import PROMISE, bound_uuid, installed, sessions, show
from tests.support.scripted_llm import ScriptedLLM, text

pytestmark = pytest.mark.slow

MODEL = "gemini-2.5-flash"


@pytest.fixture(scope="session")
def gemini_bin() -> Path:
    return installed(ensure_gemini, "gemini")


def test_gemini_wired_in_the_loop_file(gemini_bin: Path, tmp_path: Path, isolated: Path) -> None:
    (tmp_path / "work").mkdir()
    loop = write_loop(tmp_path, f"""
        name: custom-gemini
        title: "Custom Gemini #{{iteration}}"
        workdir: work
        agent:
          preset: custom
          model: {MODEL}
          prompt: "Iteration {{iteration}}: fix the next failing test, then say {PROMISE}"
          custom:
            argv: [gemini, -o, stream-json, --skip-trust, --yolo, -m, "{{model}}", --session-id, "{{session_uuid}}"]
            resume_argv: [gemini, -o, stream-json, --skip-trust, --yolo, -m, "{{model}}",
                          --resume, "{{agent_session_id}}"]
            prompt: stdin
            events: jsonl
            text: {{path: $.content, where: {{type: message, role: assistant}}}}
            text_deltas: true
            session_id: {{path: $.session_id, where: {{type: init}}}}
            tokens_in: {{path: $.stats.input_tokens, where: {{type: result}}}}
            tokens_out: {{path: $.stats.output_tokens, where: {{type: result}}}}
            tool_start: {{id: $.tool_id, name: $.tool_name, input: $.parameters, where: {{type: tool_use}}}}
            tool_end: {{id: $.tool_id, output: $.output, error: $.error.message, where: {{type: tool_result}}}}
        until:
          max_iterations: 3
          output_contains: "{PROMISE}"
        """)
    turns = [node_probe(), text("Not yet."), node_probe(), text(f"All tests pass. {PROMISE}")]
    with ScriptedLLM(turns, wire="gemini") as api:
        result = ralph("run", str(loop), env=gemini_env(tmp_path, gemini_bin, api.base_url), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = sessions()
    # The echoed prompt names the promise but is no assistant text; deltas are joined before matching.
    assert [r["status"] for r in rows] == ["ok", "complete"]
    for number, row in enumerate(rows, 1):
        gemini_id = bound_uuid(row["id"])
        assert row["agent_session_id"] == gemini_id
        assert (row["tokens_in"], row["tokens_out"]) == (200, 40)
        detail = show(row["id"])
        (step,) = detail["steps"]
        # The tool pointers: the shell call a child span of the agent step, without content.
        (use,) = [json.loads(line) for line in Path(step["log_path"]).read_text().splitlines()
                  if line.startswith('{"type":"tool_use"')]
        (tool,) = [s for s in detail["spans"] if s["name"].startswith("execute_tool")]
        assert tool["name"] == "execute_tool run_shell_command" and tool["parent_id"] == step["span_id"]
        assert tool["status"] == "unset" and tool["attributes"]["gen_ai.tool.call.id"] == use["tool_id"]
        assert "gen_ai.tool.call.arguments" not in tool["attributes"]  # content only on request
        (report,) = probes(Path(step["log_path"]).read_text())
        argv = report["agent"]["argv"]
        assert argv[argv.index("-o"):] == ["-o", "stream-json", "--skip-trust", "--yolo", "-m", MODEL,
                                           "--session-id", gemini_id]
        assert report["tool_env"]["OPENCODE_SESSION_ID"] == row["id"]
        assert report["tool_env"]["RALPH_ITERATION"] == str(number)
    assert f"[2 agent] All tests pass. {PROMISE}" in result.stdout
    assert '{"type"' not in result.stdout
