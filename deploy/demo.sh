#!/usr/bin/env bash
# Run the whole ResCoin pipeline on the embedded sim host under supervisord.
# Installs what is missing (deploy/install.sh), starts supervisord with
# deploy/supervisord.conf in the background (or makes sure every program runs,
# if it is already up), waits until every program is RUNNING and `applied`
# messages flow, and says what to look at next. State and logs: ./state
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install.sh
TRACES=$(.venv/bin/python -c 'from rescoin.services.model.traces import default_traces_dir; print(default_traces_dir())')
if [ ! -d "$TRACES" ]; then   # the sim host replays them: without them it cannot start
    echo "demo.sh: no trace folder at $TRACES (the package's data/traces/ is incomplete: reinstall)" >&2
    exit 1
fi
CONF=deploy/supervisord.conf
CTL=(.venv/bin/supervisorctl -c "$CONF")

# Least privilege (docs/SECURITY.md): the monitor and the actuator run as root, the rest as the
# user `rescoin` (made by install.sh) -- if it can run this checkout's venv. A checkout under
# /root, or a venv whose Python lives there, is not readable by it: then every program runs as
# root, from a copy of the config in state/ that says so.
RUN_AS=rescoin
if ! id rescoin >/dev/null 2>&1; then
    RUN_AS=root; why="there is no user rescoin (run deploy/install.sh as root)"
elif ! runuser -u rescoin -- "$PWD/.venv/bin/python" -c "import rescoin.services.cli" 2>/dev/null; then
    RUN_AS=root; why="user rescoin cannot read $PWD/.venv or the checkout (a directory above is not readable by others)"
fi
START_CONF=$CONF
# state/ 1770 root:rescoin: the services may write their state files (sticky: each only its own);
# logs/ is supervisord's; bus/ holds the bus's ipc sockets, 0750 rescoin:rescoin.
mkdir -p state/logs state/bus
chmod 700 state/logs
if [ "$RUN_AS" = rescoin ]; then
    chown root:rescoin state && chmod 1770 state
    chown rescoin:rescoin state/bus && chmod 750 state/bus
    for f in state/scheduler-ledger.npz state/simhost.json; do   # written by a root run before?
        if [ -e "$f" ]; then chown rescoin:rescoin "$f"; fi
    done
else
    echo "demo.sh: every program runs as root: $why" >&2
    chmod 700 state state/bus
    sed -e 's|RESCOIN_USER="rescoin"|RESCOIN_USER="root"|' -e "s|%(here)s|$PWD/deploy|g" \
        -e "s| supervisor.d/| $PWD/deploy/supervisor.d/|g" "$CONF" >state/supervisord.conf
    START_CONF=state/supervisord.conf
fi

if [ -f state/supervisord.pid ] && kill -0 "$(cat state/supervisord.pid)" 2>/dev/null; then
    echo "demo.sh: supervisord is already running (pid $(cat state/supervisord.pid)); starting what is stopped"
    "${CTL[@]}" start 'rescoin:*' >/dev/null || true
else
    .venv/bin/supervisord -c "$START_CONF"
fi

echo -n "demo.sh: waiting for every program to be RUNNING "
for _ in $(seq 120); do
    status=$("${CTL[@]}" status 2>/dev/null || true)
    if [ -n "$status" ] && ! grep -qv ' RUNNING ' <<<"$status"; then break; fi
    echo -n .
    sleep 0.5
done
echo
echo "$status"
if [ -z "$status" ] || grep -qv ' RUNNING ' <<<"$status"; then
    echo "demo.sh: not every program is RUNNING; see state/logs/" >&2
    exit 1
fi

# Wait for the pipeline's end: an `applied` message from the actuator on the bus.
.venv/bin/python - <<'PY' || { echo "demo.sh: no applied messages yet; see state/logs/" >&2; exit 1; }
import sys, time
import zmq
from rescoin.proto.codec import decode
from rescoin.services.runtime.config import load_config
from rescoin.services.schema import service_schema
cfg = load_config("deploy/demo.toml", sections=service_schema())
sub = zmq.Context.instance().socket(zmq.SUB)
sub.connect(cfg.bus.sub_endpoint)
for kind in ("sample", "applied"):
    sub.subscribe(f"{kind}/{cfg.host.name}/".encode())
seen, deadline = set(), time.monotonic() + 30
while seen != {"sample", "applied"} and time.monotonic() < deadline:
    if sub.poll(500):
        env = decode(sub.recv_multipart())
        if env.body.vms and env.kind not in seen:  # the monitor's first sample has no rates yet
            print(f"demo.sh: {env.kind} for {len(env.body.vms)} VMs, period {env.period}")
        seen.add(env.kind)
sys.exit(0 if seen == {"sample", "applied"} else 1)
PY

cat <<MSG

ResCoin runs on a simulated host replaying real VM traces (state and logs in ./state).
Look at it:
  .venv/bin/supervisorctl -c $CONF status      every service and its pid
  .venv/bin/rescoin tap --config deploy/demo.toml alloc/   live allocations (or sample/, estimate/, applied/, hb/)
  .venv/bin/rescoin status --config deploy/demo.toml        liveness of every service, from their heartbeats
  curl -s http://127.0.0.1:9810/metrics                      Prometheus metrics (rescoin-exporter)
  tail -f state/logs/*.log                                   what each service says
Stop it:
  ./deploy/stop-demo.sh       (stops every service; the actuator restores the tunables first)
MSG
