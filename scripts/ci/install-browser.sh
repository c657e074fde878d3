#!/usr/bin/env bash
# Install what tests/test_ui_browser.py drives: Debian's Chromium and its matching chromedriver
# (/usr/bin/chromium, /usr/bin/chromedriver). Idempotent; a no-op when both are already there.
# Run as root (CI is) or with sudo available. Called by .ci/run before `make test`.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "install-browser: $(chromium --version 2>/dev/null | head -1); chromedriver present"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "Error: installing chromium needs root or sudo." >&2; exit 2; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2; do
    if $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; then
        echo "install-browser: $(chromium --version 2>/dev/null | head -1)"
        exit 0
    fi
    echo "install-browser: apt-get failed (attempt $attempt)" >&2
    sleep 5
done
echo "Error: could not install chromium and chromium-driver with apt-get." >&2
exit 1
