"""Phoenix's span view of a real opencode loop as a PNG: `.venv/bin/python scripts/phoenix-screenshot.py docs/phoenix-opencode-trace.png`.

Starts a Phoenix (scripts/install-phoenix.sh) and the scripted LLM server, runs a two-iteration opencode loop
exporting to Phoenix, then has headless chromium (/usr/bin/chromium) capture the trace with the agent step selected.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.opencode import ensure_opencode, opencode_env
from tests.support.phoenix import PhoenixServer
from tests.support.scripted_llm import ScriptedLLM, bash, text

out = Path(sys.argv[1])
tmp = Path(tempfile.mkdtemp(prefix="i16shot-"))
(tmp / "work").mkdir()
loop = tmp / "loop.yaml"
loop.write_text("""name: fix-tests
title: "Fix failing tests #{iteration}"
workdir: work
agent:
  preset: opencode
  model: scripted/scripted-model
  prompt: "Fix the next failing test (iteration {iteration}). Say <promise>COMPLETE</promise> when none is left."
steps:
  before: [{name: lint, run: "echo lint ok"}]
until:
  max_iterations: 3
  output_contains: "<promise>COMPLETE</promise>"
  command_succeeds: "exit 1"
""")
turns = [bash("ls -la", "List files"), bash("echo 'def test_a(): assert 1' > test_a.py", "Write a fix"),
         bash("python3 -c 'import test_a; test_a.test_a()'", "Run the test"), text("Fixed test_a."),
         bash("cat test_a.py", "Read the test"), bash("python3 -c 'raise SystemExit(1)'", "Run the suite"),
         text("All tests pass. <promise>COMPLETE</promise>")]
binary = ensure_opencode()
env0 = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCODE_", "OTEL_", "RALPH_"))}
with PhoenixServer(tmp / "phoenix") as px, ScriptedLLM(turns) as srv:
    env = {**env0, **opencode_env(tmp, srv.base_url, "scripted/scripted-model"),
           "PATH": f"{binary.parent}{os.pathsep}{env0['PATH']}", "RALPH_STATE_DIR": str(tmp / "state"),
           "OTEL_EXPORTER_OTLP_ENDPOINT": px.base_url}
    r = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "ralph", "run", str(loop)], env=env, cwd=tmp,
                       capture_output=True, text=True, timeout=600)
    print(r.stdout[-3000:], r.stderr[-2000:])
    runs = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "ralph", "sessions", "--json"], env=env, cwd=tmp,
                          capture_output=True, text=True).stdout
    sessions = json.loads(runs)
    show = json.loads(subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "ralph", "show", sessions[0]["run_id"], "--json"],
                                     env=env, cwd=tmp, capture_output=True, text=True).stdout)
    print(subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "ralph", "show", sessions[0]["run_id"]],
                         env=env, cwd=tmp, capture_output=True, text=True).stdout)
    px.wait_for_spans(len(show["spans"]), trace_id=show["trace_id"])
    project = next(p for p in px.get_json("/v1/projects")["data"] if p["name"] == "default")["id"]
    # select the agent step of iteration 1 so the details pane shows its attributes
    agent = next(s for s in show["spans"] if s["name"] == "ralph.step" and s["attributes"].get("ralph.step.kind") == "agent")
    url = f"{px.base_url}/projects/{project}/traces/{show['trace_id']}?selectedSpanNodeId="
    spans = px.spans(trace_id=show["trace_id"])
    node = next(s["id"] for s in spans if s["context"]["span_id"] == agent["span_id"])
    url += node
    print(url)
    prof = Path(tempfile.mkdtemp(prefix="chromium-"))
    cmd = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={prof}", f"--screenshot={out}",
           "--window-size=1400,900", "--hide-scrollbars", "--virtual-time-budget=15000", url]
    c = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    print(c.returncode, c.stderr[-1500:])
    shutil.rmtree(prof, ignore_errors=True)
