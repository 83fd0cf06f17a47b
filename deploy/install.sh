#!/usr/bin/env bash
# Install what ResCoin needs on Debian 12, from nothing; idempotent.
#   deploy/install.sh          runtime: apt build deps for libvirt-python, a venv in .venv (from Debian's python3), the package
#   deploy/install.sh --test   also what the test suite drives for real: libvirtd + QEMU (TCG),
#                              busybox and a guest kernel for tiny VMs, prometheus + promtool, tmux, iproute2
# Also the system user and group `rescoin`: every service but the monitor and the actuator
# runs as it (docs/SECURITY.md).
# Run as root (apt, useradd). VENV=/path overrides the venv location.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
WANT_TEST=0
[ "${1:-}" = "--test" ] && WANT_TEST=1
export DEBIAN_FRONTEND=noninteractive

# libvirt-python has no wheels: it builds against libvirt-dev with pkg-config and gcc.
PKGS="python3 python3-venv python3-dev libvirt-dev pkg-config gcc iproute2 curl"
if [ "$WANT_TEST" = 1 ]; then
    # libvirt-daemon-system is left out on purpose: it pulls systemd; we start libvirtd by hand.
    PKGS="$PKGS libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
          busybox-static prometheus tmux debootstrap cpio kmod procps psmisc"
fi
missing=$(dpkg-query -W -f='${Package} ${Status}\n' $PKGS 2>/dev/null | awk '$4 != "installed" {print $1}' || true)
for p in $PKGS; do dpkg-query -W "$p" >/dev/null 2>&1 || missing="$missing $p"; done
missing=$(echo $missing | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [ -n "${missing// /}" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install.sh: missing Debian packages: $missing (run as root, or install them)" >&2
        exit 1
    fi
    echo "install.sh: apt-get install $missing"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

# Debian's own Python, so that user rescoin can run the venv (a pyenv or a Python built under
# /root is not readable by others); PYTHON=/path overrides it. A venv made from another Python
# is made again.
PY=$(command -v "${PYTHON:-/usr/bin/python3}") || { echo "install.sh: no Python at ${PYTHON:-/usr/bin/python3}" >&2; exit 1; }
if [ -f "$VENV/pyvenv.cfg" ] && [ "$(readlink -f "$VENV/bin/python")" != "$(readlink -f "$PY")" ]; then
    echo "install.sh: $VENV was made from another Python than $PY; making it again"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
extras=""
[ "$WANT_TEST" = 1 ] && extras="[test]"
# Quiet, but keep errors; the editable install lets a checkout be worked on in place.
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT$extras" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import rescoin.services.cli, libvirt, zmq, numpy" \
    || { echo "install.sh: the install did not import" >&2; exit 1; }

# The unprivileged user the services run as (supervisor.d/*.conf: user=%(ENV_RESCOIN_USER)s).
if [ "$(id -u)" = 0 ]; then
    getent group rescoin >/dev/null || groupadd --system rescoin
    id rescoin >/dev/null 2>&1 || useradd --system -g rescoin --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin rescoin
    if ! runuser -u rescoin -- "$VENV/bin/python" -c "import rescoin.services.cli" 2>/dev/null; then
        echo "install.sh: note: user rescoin cannot run $VENV (a directory above the checkout or the" \
             "venv's Python is not readable by others); demo.sh then runs every service as root" >&2
    fi
elif ! id rescoin >/dev/null 2>&1; then
    echo "install.sh: no user rescoin (run as root once to create it)" >&2
fi
echo "install.sh: ready ($VENV)"
