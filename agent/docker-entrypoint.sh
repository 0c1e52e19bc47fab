#!/bin/sh
# Enrolls once (with LATCHKEY_ENROLLMENT_TOKEN and LATCHKEY_SERVER), then runs the daemon.
set -eu
state="${LATCHKEY_AGENT_STATE:-/var/lib/latchkey-agent}"
if [ ! -f "$state/credential.json" ]; then
  : "${LATCHKEY_SERVER:?set LATCHKEY_SERVER to the Latchkey server URL}"
  : "${LATCHKEY_ENROLLMENT_TOKEN:?set LATCHKEY_ENROLLMENT_TOKEN to a one-time enrollment token}"
  latchkey-agent enroll --state "$state" --server "$LATCHKEY_SERVER" \
    --token "$LATCHKEY_ENROLLMENT_TOKEN" --hostname "${LATCHKEY_AGENT_HOSTNAME:-$(hostname)}"
fi
exec latchkey-agent run --state "$state" "$@"
