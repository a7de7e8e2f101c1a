#!/bin/sh
# The seed's user script: it knows which session it runs in from the environment alone.
# Appends one line per session to $RALPH_SESSION_LOG (default: iterations.log in the state folder).
log="${RALPH_SESSION_LOG:-${RALPH_STATE_DIR:-.}/iterations.log}"
echo "Running in session: $OPENCODE_SESSION_TITLE ($OPENCODE_SESSION_ID)" >> "$log"
echo "logged session $OPENCODE_SESSION_ID to $log"
