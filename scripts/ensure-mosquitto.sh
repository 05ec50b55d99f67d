#!/usr/bin/env bash
# Make sure Mosquitto 2 (the broker and mosquitto_passwd) is installed, without leaving a system broker running.
# Quiet and does nothing when it is installed already. As root on Debian/Ubuntu it installs the `mosquitto`
# package with apt-get; otherwise it says which command to run and exits 1.
# The tests start their own broker on a free port; the package's service (port 1883) is stopped and disabled.
set -euo pipefail

have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }
have_mosquitto && exit 0

. "$(dirname "$0")/lib-apt.sh"
apt_require_root mosquitto mosquitto \
  "install Mosquitto 2 (broker and mosquitto_passwd) with this system's package manager"

# Keep the package from starting its service: Debian's invoke-rc.d asks policy-rc.d, and 101 means "do not start".
# Only when no policy is set already, and removed again on exit.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

apt_install mosquitto

# In case a service started anyway: stop and disable the system broker, and kill only the pid it wrote.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now mosquitto >/dev/null 2>&1 || true
else
  command -v service >/dev/null 2>&1 && service mosquitto stop >/dev/null 2>&1 || true
  command -v update-rc.d >/dev/null 2>&1 && update-rc.d mosquitto disable >/dev/null 2>&1 || true
fi
pidfile=/run/mosquitto/mosquitto.pid
if [ -s "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = mosquitto ]; then kill "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
fi

apt_confirm mosquitto have_mosquitto
echo "Installed mosquitto; its system service is stopped and disabled" >&2
