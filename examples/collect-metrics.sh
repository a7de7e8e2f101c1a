#!/bin/sh
# Attach metrics collection to the last session (or the one given): `ralph exec` runs the collector
# as an `exec` step OF that session, so it gets the session's env (OPENCODE_SESSION_ID, RALPH_* and
# the loop's env:), its output lands in logs/<run>/<session>/exec-N.log, and its span (and the
# TRACEPARENT it sees) sits under that session's iteration span in the same trace.
#
#   examples/collect-metrics.sh                 # the newest session (or $RALPH_SESSION_ID)
#   examples/collect-metrics.sh ses_2127        # a session ID or unique prefix
set -eu
exec ralph exec ${1:+--session "$1"} -- sh -c '
    log="$RALPH_STATE_DIR/logs/$RALPH_RUN_ID/$RALPH_SESSION_ID/agent.log"
    echo "metrics for session $RALPH_SESSION_ID ($RALPH_SESSION_TITLE), iteration $RALPH_ITERATION"
    echo "agent_output_lines=$(wc -l < "$log" 2>/dev/null || echo 0)"
    echo "agent_output_bytes=$(wc -c < "$log" 2>/dev/null || echo 0)"
    if git rev-parse --git-dir >/dev/null 2>&1; then
        echo "git_files_changed=$(git diff --name-only HEAD | wc -l)"
    fi
    echo "traceparent=$TRACEPARENT"
    # Metrics here also reach an OTLP backend, labelled with the session, e.g.:
    #   OTEL_RESOURCE_ATTRIBUTES="$OTEL_RESOURCE_ATTRIBUTES" my-otel-metrics-push ...
'
