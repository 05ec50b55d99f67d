#!/usr/bin/env bash
# Make sure Debian's Chromium is installed, for the browser tests (Playwright drives it with executable_path;
# Playwright's own browser download does not work here). Quiet and does nothing when it is installed already.
# As root on Debian/Ubuntu it installs the `chromium` package with apt-get; otherwise it says which command to run and exits 1.
set -euo pipefail

have_chromium() { command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; }
have_chromium && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "chromium is not installed: run 'sudo apt-get update && sudo apt-get install -y chromium' (or 'sudo $0'), then try again" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is not installed and apt-get is missing: install Chromium with this system's package manager so that 'chromium' is on PATH" >&2
  exit 1
fi

echo "Installing chromium with apt-get ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

have_chromium || { echo "apt-get install chromium finished but no chromium binary was found; check the apt output above" >&2; exit 1; }
echo "Installed chromium: $(command -v chromium)" >&2
