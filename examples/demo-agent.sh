#!/bin/sh
# A scripted stand-in for an AI agent, so the demo loop runs with no LLM and no server.
# Each session "fixes" one failing test in a scratch project and, once none is left, prints the
# completion promise. It reads its prompt on stdin and its session from the environment.
set -eu
work="${RALPH_STATE_DIR:?}/demo/${RALPH_RUN_ID:?}"
mkdir -p "$work"
todo="$work/TODO.md"
if [ ! -f "$todo" ]; then
    printf '%s\n' "- [ ] test_parse" "- [ ] test_render" "- [ ] test_export" > "$todo"
fi
prompt=$(cat)
echo "agent: I am session $OPENCODE_SESSION_ID \"$OPENCODE_SESSION_TITLE\" (iteration $RALPH_ITERATION)"
echo "agent: my task: $prompt"
next=$(grep -m1 '^- \[ \] ' "$todo" || true)
if [ -n "$next" ]; then
    name=${next#- \[ \] }
    awk -v n="$name" '!done && $0 == "- [ ] " n { print "- [x] " n; done = 1; next } { print }' "$todo" > "$todo.new"
    mv "$todo.new" "$todo"
    echo "agent: fixed $name"
fi
if grep -q '^- \[ \] ' "$todo"; then
    echo "agent: $(grep -c '^- \[ \] ' "$todo") failing test(s) left"
else
    echo "agent: all tests pass <promise>COMPLETE</promise>"
fi
