#!/usr/bin/env bash
# The main job: set up, then analyze the bundled sample traces (and, when the
# profiling extra is installed, profile a CPU reference run and analyze it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "${OVERLAPSCOPE_EXTRAS:-profiling}"
OS=.venv/bin/overlapscope
echo "== Sample traces: H200 DualPipe-style chunk pair (overlap vs serial), DeepEP-style dispatch next to GEMMs, hand-made 2-GPU run"
$OS analyze sample_traces/h200/gpu_overlap_rank0.json.gz sample_traces/h200/gpu_serial_rank0.json.gz \
  sample_traces/h200/varsm_rank0.json.gz sample_traces/handmade --tables summary,streams,annotations
if .venv/bin/python -c "import torch" 2>/dev/null && $OS profile --help >/dev/null 2>&1; then
  echo "== Profiling a DualPipe MoE reference run on CPU (8 ranks on 2 simulated nodes)"
  # PP 2 x EP 4: every expert group spans both nodes with 2 GPUs on each, and the node
  # limit M = 1 < 2 nodes binds, so dispatch/combine cross IB *and* NVLink
  $OS profile --workload dualpipe-moe --schedule dualpipe --pp 2 --ep 4 --nodes 2 \
    --gpus-per-node 4 --micro-batches 8 --out runs/demo --force   # --force: replace the last demo run
  $OS analyze runs/demo --tables summary,annotations,pipeline,traffic,traffic_by_collective,routing
  run=runs/demo
else
  echo "(torch is not installed: skipped profiling a reference run; bash scripts/setup.sh profiling)"
  run=sample_traces
fi
echo
echo "== Look at it in the web dashboard (all ranks on one timeline, overlap, pipeline, traffic):"
echo "   .venv/bin/overlapscope dashboard $run     # then open http://127.0.0.1:8050"
