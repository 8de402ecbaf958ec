#!/usr/bin/env bash
# Prove that an install profile works from a clean venv (scripts/test.sh runs all three):
#   bash scripts/check_install.sh base       # `pip install .` (no extras): analyze the bundled
#                                            # sample traces, tune-dispatch, without torch
#   bash scripts/check_install.sh profiling  # `pip install '.[profiling]'`: one small profile
#                                            # run + analyze it; a second run into it is refused
#   bash scripts/check_install.sh demo       # the README's first command in a clone-like copy
# Each check works in a fresh temporary directory (removed afterwards) and installs from a
# clone-like copy of the working tree (tracked + untracked-but-not-ignored files), so a file
# missing from git or from the package fails here. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
what="${1:?usage: check_install.sh base|profiling|demo}"
PY="${PYTHON:-python3}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/overlapscope-check-${what}.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
export OVERLAPSCOPE_CACHE_DIR="$WORK/cache"

clone_like() {  # clone_like DEST: copy what a fresh clone of this working tree would hold
  mkdir -p "$1"
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -xf - -C "$1"
  else
    tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./runs --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=./build -cf - . | tar -xf - -C "$1"
  fi
}

fresh_venv() {  # fresh_venv DIR
  "$PY" -m venv "$1"
  "$1/bin/python" -m pip install -q --upgrade pip
}

logged() {  # logged NAME CMD...: run quietly into $WORK/NAME.log, show the tail (all on failure)
  local log="$WORK/$1.log"
  shift
  echo "\$ $*"
  if "$@" >"$log" 2>&1; then
    tail -n 3 "$log" | sed 's/^/    /'
  else
    local rc=$?
    cat "$log"
    echo "error: '$*' failed with exit status $rc" >&2
    return "$rc"
  fi
}

expect_exit() {  # expect_exit CODE TEXT CMD...: CMD must exit CODE and print TEXT
  local want=$1 text=$2
  shift 2
  echo "\$ $*   (expect exit $want)"
  set +e
  out=$("$@" 2>&1)
  local rc=$?
  set -e
  if [ "$rc" -ne "$want" ] || ! grep -qF -- "$text" <<<"$out"; then
    echo "$out"
    echo "error: expected exit $want and '$text', got exit $rc" >&2
    return 1
  fi
  echo "    $(head -n 1 <<<"$out")"
}

case "$what" in
  base)
    clone_like "$WORK/src"
    fresh_venv "$WORK/venv"
    logged pip "$WORK/venv/bin/python" -m pip install -q "$WORK/src"
    V="$WORK/venv/bin"
    if "$V/python" -c "import torch" 2>/dev/null; then
      echo "error: the base install pulled in torch" >&2
      exit 1
    fi
    "$V/overlapscope" --version
    cd "$WORK/src"
    logged analyze "$V/overlapscope" analyze sample_traces/h200/*.json.gz sample_traces/handmade \
      sample_traces/cpu/dualpipe
    logged analyze-json "$V/overlapscope" analyze sample_traces/handmade --format json
    logged tune-dispatch "$V/overlapscope" tune-dispatch --tokens 256 --nodes 2 \
      --gpus-per-node 4 --experts 32 --top-k 4 --node-limit 2 --receivers 1,2 --channels 2 \
      --no-progress --out "$WORK/tune.html"
    test -s "$WORK/tune.html"
    expect_exit 2 "overlapscope[profiling]" "$V/overlapscope" profile --out "$WORK/never"
    # The dashboard serves its pages and packaged assets from a regular install.
    "$V/overlapscope" dashboard sample_traces/handmade --port 8765 >"$WORK/dash.log" 2>&1 &
    dash_pid=$!
    logged dashboard "$V/python" - <<'PY'
import time, urllib.request
for _ in range(120):
    try:
        page = urllib.request.urlopen("http://127.0.0.1:8765/", timeout=2).read().decode()
        css = urllib.request.urlopen("http://127.0.0.1:8765/assets/style.css", timeout=2)
        assert "overlapscope" in page and css.status == 200
        print("dashboard served the page and its stylesheet")
        break
    except OSError:
        time.sleep(0.5)
else:
    raise SystemExit("dashboard did not answer on 127.0.0.1:8765")
PY
    kill "$dash_pid" 2>/dev/null || true
    wait "$dash_pid" 2>/dev/null || true
    ;;
  profiling)
    clone_like "$WORK/src"
    fresh_venv "$WORK/venv"
    logged pip "$WORK/venv/bin/python" -m pip install -q "$WORK/src[profiling]"
    V="$WORK/venv/bin"
    "$V/python" -c "import torch; print('torch', torch.__version__)"
    run=(--workload smoke --nodes 1 --gpus-per-node 2 --steps 1 --out "$WORK/run")
    logged profile "$V/overlapscope" profile "${run[@]}"
    logged analyze "$V/overlapscope" analyze "$WORK/run"
    expect_exit 2 "already holds a run" "$V/overlapscope" profile "${run[@]}"
    ;;
  demo)
    clone_like "$WORK/clone"
    cd "$WORK/clone"
    logged demo bash scripts/demo.sh
    test -f runs/demo/run.json
    ;;
  *)
    echo "usage: check_install.sh base|profiling|demo" >&2
    exit 2
    ;;
esac
echo "check_install $what: ok"
