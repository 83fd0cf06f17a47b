#!/usr/bin/env bash
# Set up everything the tests need (apt packages, venv, libvirtd/QEMU for the
# real-VM suite, promtool), check the code (ruff, the format, mypy: any finding
# fails the run) and run the whole suite. As root on Debian 12.
# Extra arguments go to pytest (e.g. deploy/test.sh tests/unit -x).
# With CI=true a test that would skip for something missing fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
./deploy/install.sh --test
echo "test.sh: setup took $(( $(date +%s) - start )) s"
LINTED=(proto services guest_agent)   # the same as `make lint`
.venv/bin/ruff check "${LINTED[@]}"
.venv/bin/ruff format --check "${LINTED[@]}"
.venv/bin/mypy "${LINTED[@]}"
exec .venv/bin/python -m pytest -ra --durations=15 "$@"
