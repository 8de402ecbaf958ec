#!/usr/bin/env bash
# Create (or reuse) .venv and install overlapscope with the given extras.
#   bash scripts/setup.sh            # analysis only (polars, msgspec, typer, dash)
#   bash scripts/setup.sh profiling  # + torch==2.13.0 (CPU build where available)
#   bash scripts/setup.sh all        # profiling + hta + dev (what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
case "$extras" in
  all) extras="profiling,hta,dev" ;;
esac
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[${extras}]"
else
  .venv/bin/python -m pip install -q -e .
fi
