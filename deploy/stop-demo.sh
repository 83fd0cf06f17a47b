#!/usr/bin/env bash
# Stop the demo started by deploy/demo.sh: every service, then supervisord.
set -euo pipefail
cd "$(dirname "$0")/.."
CONF=deploy/supervisord.conf
if ! { [ -f state/supervisord.pid ] && kill -0 "$(cat state/supervisord.pid)" 2>/dev/null; }; then
    echo "stop-demo.sh: the demo is not running"
    exit 0
fi
pid=$(cat state/supervisord.pid)
# shutdown stops the services in reverse priority order (actuator first: it restores) and exits
.venv/bin/supervisorctl -c "$CONF" shutdown
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { echo "stop-demo.sh: stopped"; exit 0; }; sleep 0.2; done
echo "stop-demo.sh: supervisord $pid is still running after 20 s" >&2
exit 1
