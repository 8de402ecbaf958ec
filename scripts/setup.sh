#!/usr/bin/env bash
# Create (or reuse) .venv and install overlapscope (editable) with the given extras.
#   bash scripts/setup.sh            # analysis + dashboard: numpy, polars, msgspec, typer, rich, plotly, dash
#   bash scripts/setup.sh profiling  # + torch==2.13.0 for `overlapscope profile`
#   bash scripts/setup.sh all        # profiling + hta + ray + dev (what the tests need)
# Any comma-separated list of extras works too: bash scripts/setup.sh profiling,hta
# PYTHON=python3.12 picks the interpreter; OVERLAPSCOPE_VENV=DIR another venv directory.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
case "$extras" in
  all) extras="profiling,hta,ray,dev" ;;
esac
PY="${PYTHON:-python3}"
VENV="${OVERLAPSCOPE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ -n "$extras" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[${extras}]"
else
  "$VENV/bin/python" -m pip install -q -e .
fi
