#!/usr/bin/env bash
# Fails when nbdev-export or nbdev-clean would change anything: notebooks are the source of truth.
# Compares the tree before and after on the tracked and untracked files (new exported files count too).
set -euo pipefail
cd "$(dirname "$0")/.."
snap() { git status --porcelain --untracked-files=all -- nbs iot2ml pyproject.toml; git diff -- nbs iot2ml pyproject.toml | sha1sum; \
         git ls-files --others --exclude-standard -- nbs iot2ml pyproject.toml | xargs -r cat | sha1sum; }
before=$(snap)
nbdev-export
nbdev-clean
after=$(snap)
if [ "$before" != "$after" ]; then
  echo "Notebooks and package are out of sync: nbdev-export/nbdev-clean changed these files:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  echo "Fix: edit the notebook, run nbdev-export && nbdev-clean, and commit both." >&2
  exit 1
fi
echo "notebooks and package in sync"
