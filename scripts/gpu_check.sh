#!/usr/bin/env bash
# One-shot GPU check of the profiler's CUDA paths (issue 9). Run on a GPU machine:
#
#   bash scripts/gpu_check.sh [OUT_DIR]      # default: $OUT, else runs/gpu_check
#
# Steps (each bounded by `timeout`; the whole script stays under 8 minutes on one H200):
#   1. every gpu-marked test (pytest -m gpu), traces of the overlapped-pair test kept;
#   2. the warp-specialized dispatch kernel under compute-sanitizer memcheck and
#      racecheck on a small config (PyTorch's caching allocator off, so out-of-bounds
#      accesses are not hidden inside pooled blocks);
#   3. the single-process overlapped F&B pair with and without the comm stream (part of
#      step 1: tests/gpu/test_gpu_comm_stream.py; its summary.json is copied);
#   4. with >= 2 GPUs, 2-rank nccl runs (dualpipe-moe PP 2, ep-dispatch over 2 "nodes")
#      and their analysis.
# Writes traces, logs and summary.txt into OUT_DIR. Exit status: 0 all passed, 1 some
# step failed (see summary.txt), 3 no GPU here (nothing run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
OS=("$PY" -m overlapscope.app.cli)
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
FAILED=0
step() {  # step NAME TIMEOUT_S CMD...: run, log to OUT_DIR/NAME.log, record the outcome
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then note "PASS  $name (${took}s)"
  else note "FAIL  $name (rc $rc, ${took}s; log: $OUT_DIR/$name.log)"; FAILED=1; fi
  return 0
}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  note "no GPU here (nvidia-smi missing or sees no device): nothing to check; run this on a GPU machine"
  exit 3
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  note "torch in $PY has no CUDA (CPU build?): install the CUDA build of torch==2.13.0 first"
  exit 3
fi
NGPU="$("$PY" -c "import torch; print(torch.cuda.device_count())")"
note "gpu_check $(date -u +%FT%TZ) on $(hostname): $NGPU GPU(s)"
nvidia-smi -L | tee -a "$SUMMARY"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$SUMMARY"
command -v nvcc >/dev/null && nvcc --version | tail -1 | tee -a "$SUMMARY"
export OMP_NUM_THREADS=1 OVERLAPSCOPE_GPU_OUT="$OUT_DIR/pytest"

# 0. build the warp kernel once (cached), with the resource report
if command -v nvcc >/dev/null; then
  ARCH="$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'sm_{m}{n}')")"
  step nvcc_resources 120 nvcc -arch="$ARCH" -O3 -Xptxas -v -c profiler/warps/kernel.cu -o "$OUT_DIR/kernel.o"
  grep -E "registers|spill|stack" "$OUT_DIR/nvcc_resources.log" | sed 's/^/      /' | tee -a "$SUMMARY"
fi

# 1 + 3. every gpu-marked test (includes the overlapped pair with / without comm stream)
step pytest_gpu 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu -o addopts="" \
  -W ignore::DeprecationWarning tests --junitxml="$OUT_DIR/pytest_gpu.xml"
tail -3 "$OUT_DIR/pytest_gpu.log" | sed 's/^/      /' | tee -a "$SUMMARY"
if [ -f "$OUT_DIR/pytest/pair_comm_stream/summary.json" ]; then
  note "      overlapped pair: $(tr -d '\n ' < "$OUT_DIR/pytest/pair_comm_stream/summary.json")"
fi

# 2. compute-sanitizer on the warp kernel (small config: 2 nodes x 2 GPUs, 96 tokens)
cat > "$OUT_DIR/sanitize_kernel.py" <<'EOF'
import numpy as np, torch
from overlapscope.profiler.warps.cuda_kernel import (KernelConfig, masks_from_topk,
    reference_rows, run_cuda_dispatch)
cfg = KernelConfig(nodes=2, gpus_per_node=2, token_bytes=64, channels=2, chunk_tokens=4,
                   ring_chunks=2, senders=2, forwarders=2, receivers=2, timeout_ms=20000)
rng = np.random.default_rng(0)
ids = np.stack([rng.choice(16, size=3, replace=False) for _ in range(96)])
mask = masks_from_topk(ids, experts=16, cfg=cfg)
x = torch.randint(0, 256, (96, 64), dtype=torch.uint8, device="cuda")
res = run_cuda_dispatch(x, mask, cfg)
for d, rows in enumerate(reference_rows(mask, cfg)):
    assert torch.equal(res.out[d, :len(rows)].cpu(), x[torch.from_numpy(rows).cuda()].cpu()), d
print("kernel ok:", len(res.records), "records; link bytes", res.link_bytes(),
      "plan nvl", res.plan.nvl_bytes, "local fwd", res.plan.local_fwd_bytes)
EOF
if command -v compute-sanitizer >/dev/null; then
  "$PY" "$OUT_DIR/sanitize_kernel.py" > "$OUT_DIR/kernel_build.log" 2>&1  # build outside the sanitizer
  for tool in memcheck racecheck; do
    step "sanitizer_$tool" 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer \
      --tool "$tool" --error-exitcode 9 --kernel-name kns=warp_dispatch \
      "$PY" "$OUT_DIR/sanitize_kernel.py"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|kernel ok" "$OUT_DIR/sanitizer_$tool.log" | sed 's/^/      /' | tee -a "$SUMMARY"
  done
else
  note "SKIP  compute-sanitizer not on PATH (part of the CUDA toolkit)"
fi

# 4. 2-rank nccl runs, traced, then analyzed
if [ "$NGPU" -ge 2 ]; then
  step nccl_dualpipe_moe 120 "${OS[@]}" profile --workload dualpipe-moe --schedule dualpipe \
    --pp 2 --nodes 1 --gpus-per-node 2 --micro-batches 4 --steps 2 --backend nccl \
    --out "$OUT_DIR/nccl_dualpipe_moe" --force --timeout 110
  step nccl_ep_dispatch 120 "${OS[@]}" profile --workload ep-dispatch --nodes 2 \
    --gpus-per-node 1 --steps 2 --backend nccl --out "$OUT_DIR/nccl_ep_dispatch" --force \
    --timeout 110
  for run in nccl_dualpipe_moe nccl_ep_dispatch; do
    if [ -d "$OUT_DIR/$run" ]; then
      step "analyze_$run" 60 "${OS[@]}" analyze "$OUT_DIR/$run" --no-cache \
        --tables summary,streams,annotations,traffic,pipeline
    fi
  done
else
  note "SKIP  2-rank nccl runs: only $NGPU GPU"
fi

note "traces and logs: $OUT_DIR"
if [ "$FAILED" -ne 0 ]; then note "RESULT: FAILED"; exit 1; fi
note "RESULT: all steps passed"
