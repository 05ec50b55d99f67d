# Sourced by scripts/ensure-*.sh: the root and apt-get checks and the quiet install they share.
#   apt_require_root NAME HINT_PACKAGES OTHERWISE   exit 1 with a clear message unless root with apt-get
#   apt_install PACKAGE...                            apt-get update and install, quietly, without recommends
#   apt_confirm NAME CHECK                            exit 1 unless the command CHECK now succeeds
# NAME is what is missing (e.g. chromium); OTHERWISE says what to do on a system without apt-get.

apt_require_root() {
  local name=$1 hint=$2 otherwise=$3
  if [ "$(id -u)" != 0 ]; then
    echo "$name is not installed: run 'sudo apt-get update && sudo apt-get install -y $hint' (or 'sudo $0'), then try again" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$name is not installed and apt-get is missing: $otherwise" >&2
    exit 1
  fi
}

apt_install() {
  echo "Installing $1 with apt-get ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

apt_confirm() {
  local name=$1 check=$2
  "$check" || { echo "apt-get install $name finished but no $name binary was found; check the apt output above" >&2; exit 1; }
}
