#!/usr/bin/env bash
# Set up everything the tests need and run them all (fast tier, then the slow
# multi-process / parity / large-trace tier). GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
export OMP_NUM_THREADS=1
export OVERLAPSCOPE_CACHE_DIR="${OVERLAPSCOPE_CACHE_DIR:-$(mktemp -d)}"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider -m "not gpu" "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: that is a failure of this script too.
exit $rc
