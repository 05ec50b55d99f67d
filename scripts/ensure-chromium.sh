#!/usr/bin/env bash
# Make sure Debian's Chromium is installed, for the browser tests (Playwright drives it with executable_path;
# Playwright's own browser download does not work here). Quiet and does nothing when it is installed already.
# As root on Debian/Ubuntu it installs the `chromium` package with apt-get; otherwise it says which command to run and exits 1.
set -euo pipefail

have_chromium() { command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; }
have_chromium && exit 0

. "$(dirname "$0")/lib-apt.sh"
apt_require_root chromium chromium \
  "install Chromium with this system's package manager so that 'chromium' is on PATH"
apt_install chromium fonts-dejavu-core
apt_confirm chromium have_chromium
echo "Installed chromium: $(command -v chromium)" >&2
