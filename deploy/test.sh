#!/usr/bin/env bash
# Set up everything the tests need (apt packages, venv, libvirtd/QEMU for the
# real-VM suite, promtool) and run the whole suite. As root on Debian 12.
# Extra arguments go to pytest (e.g. deploy/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
./deploy/install.sh --test
echo "test.sh: setup took $(( $(date +%s) - start )) s"
exec .venv/bin/python -m pytest -ra --durations=15 "$@"
