#!/usr/bin/env bash
# Everything CI checks (.ci/run calls exactly this), each stage timed:
#   1. chromium + chromium-driver (apt) for the dashboard's browser tests
#   2. .venv with every extra (scripts/setup.sh all)
#   3. every install profile from a clean venv (scripts/check_install.sh): base `pip install .`
#      analyzes the sample traces; the `profiling` extra profiles + analyzes a small run; the
#      README's first command (scripts/demo.sh) runs to the end in a clone-like copy
#   4. the fast test tier, then the slow tier (multi-process, parity, large traces, browser);
#      GPU tests are left to the device machine.
# Arguments go to both pytest runs. OVERLAPSCOPE_SKIP_INSTALL_CHECKS=1 skips stage 3.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
export OVERLAPSCOPE_CACHE_DIR="${OVERLAPSCOPE_CACHE_DIR:-$(mktemp -d)}"
TIMES=()
failed=()
t_all=$(date +%s)

stage() {  # stage NAME CMD...: run, time, remember a failure but go on
  local name=$1 t0 rc
  shift
  echo
  echo "=== $name: $*"
  t0=$(date +%s)
  set +e
  "$@"
  rc=$?
  set -e
  TIMES+=("$(printf '%-22s %5ss  %s' "$name" "$(($(date +%s) - t0))" \
    "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")")")
  [ $rc -eq 0 ] || failed+=("$name")
  return 0
}

summary() {
  echo
  echo "=== stage times"
  printf '  %s\n' "${TIMES[@]}"
  echo "  total                  $(($(date +%s) - t_all))s"
}

stage chromium bash scripts/ensure_chromium.sh
stage setup bash scripts/setup.sh all
if [ ${#failed[@]} -ne 0 ]; then  # no venv: nothing below can run
  summary
  exit 1
fi
if [ "${OVERLAPSCOPE_SKIP_INSTALL_CHECKS:-}" != "1" ]; then
  stage install-base bash scripts/check_install.sh base
  stage install-profiling bash scripts/check_install.sh profiling
  stage demo bash scripts/check_install.sh demo
fi
# pytest exit 5 = no tests collected: a failure of this script too.
stage tests-fast .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
stage tests-slow .venv/bin/python -m pytest -q -p no:cacheprovider -m "slow and not gpu" "$@"
summary
if [ ${#failed[@]} -ne 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
