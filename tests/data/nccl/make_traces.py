"""Regenerate the hand-made multi-rank NCCL traces of this folder (run from anywhere).

Each scenario is a folder in HTA's expected layout: one Kineto JSON file per rank
and nothing else that ends in .json/.gz. HTA finds the rank with the regex
``"rank":\\s+(\\d+)``, so the files are written with ``": "`` separators and
``distributedInfo`` comes first. Every GPU event has ``args.stream`` and a
``correlation`` matching a ``cudaLaunchKernel``/``cudaMemcpyAsync`` runtime event,
because HTA keeps only GPU events whose launch it finds before the last
``ProfilerStep``. Times are given in microseconds relative to T0; fractions are
multiples of 1/8 us so that float64 holds them exactly (no parser may disagree).

The expected numbers in tests/integration/test_hta_parity.py are worked out by
hand from the tables below, not from this script.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
T0 = 5_000_000_000_000.0  # us; Kineto-like magnitude (above 2**42, exercises exact parsing)
BASE_NS = 1_790_000_000_000_000_000
STEP_US = 1000.0

GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1"
EWISE = "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float> >"
ALLREDUCE = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
SENDRECV = "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"
DTOD = "Memcpy DtoD (Device -> Device)"
MEMSET = "Memset (Device)"
NOTIFY = "void deep_ep::internode::notify_dispatch<false, 8>(int const*, int*, int, int const*)"
DISPATCH = "void deep_ep::internode::dispatch<false, 8, false, 8>(int4*, float*, int*, long*)"
COMBINE = "void deep_ep::internode::combine<__nv_bfloat16, 8, 4, 24>(int4*, float*, int4 const*)"

CAT = {DTOD: "gpu_memcpy", MEMSET: "gpu_memset"}

# (name, stream, start_us, end_us, launch_us) per rank, relative to T0.
SCENARIOS: dict[str, dict[int, list[tuple[str, int, float, float, float]]]] = {
    # Whole-microsecond times: HTA's rounding is a no-op, only its rules differ.
    "allreduce_2rank": {
        0: [
            (GEMM, 7, 100, 400, 50),  # step 1
            (ALLREDUCE, 20, 300, 600, 60),
            (DTOD, 7, 650, 700, 70),
            (EWISE, 7, 700, 800, 80),
            (GEMM, 7, 1100, 1500, 1050),  # step 2
            (ALLREDUCE, 20, 1200, 1400, 1060),
            (SENDRECV, 20, 1600, 1700, 1070),
            (MEMSET, 7, 1750, 1760, 1080),
            (EWISE, 7, 2010, 2060, 1990),  # launched in step 2, runs in step 3
            (GEMM, 7, 2100, 2300, 2050),  # step 3 (HTA drops it)
            (ALLREDUCE, 20, 2250, 2450, 2060),
        ],
        1: [
            (GEMM, 7, 120, 520, 50),
            (ALLREDUCE, 20, 200, 600, 60),
            (DTOD, 7, 600, 640, 70),
            (GEMM, 7, 1100, 1300, 1050),
            (ALLREDUCE, 20, 1250, 1450, 1060),
            (GEMM, 7, 2100, 2200, 2050),
            (ALLREDUCE, 20, 2150, 2350, 2060),
        ],
    },
    # Sub-microsecond boundaries: HTA ceils starts and floors ends to whole us.
    "subus_2rank": {
        0: [
            (GEMM, 7, 100.25, 400.75, 50),
            (ALLREDUCE, 20, 300.5, 600.125, 60),
            (EWISE, 7, 700.375, 800.5, 70),
            (GEMM, 7, 1100.625, 1500.875, 1050),
            (SENDRECV, 20, 1600.25, 1700.25, 1060),
            (GEMM, 7, 2100.5, 2300.5, 2050),  # step 3
        ],
        1: [
            (GEMM, 7, 120.125, 520.625, 50),
            (ALLREDUCE, 20, 200.875, 600.375, 60),
            (ALLREDUCE, 20, 1250.5, 1450.25, 1060),
            (GEMM, 7, 1100.75, 1300.125, 1050),
            (GEMM, 7, 2100.5, 2200.5, 2050),  # step 3
        ],
    },
    # DeepEP-named communication, no NCCL kernel: HTA sees no communication at all.
    "deepep_2rank": {
        0: [
            (NOTIFY, 27, 20, 50, 10),
            (DISPATCH, 27, 50, 350, 12),
            (GEMM, 7, 100, 500, 14),
            (COMBINE, 27, 600, 900, 16),
            (EWISE, 7, 700, 800, 18),
            (GEMM, 7, 2100, 2200, 2050),  # step 3
        ],
        1: [
            (NOTIFY, 27, 20, 60, 10),
            (DISPATCH, 27, 60, 400, 12),
            (GEMM, 7, 100, 300, 14),
            (COMBINE, 27, 500, 700, 16),
            (GEMM, 7, 2100, 2200, 2050),  # step 3
        ],
    },
}


def _x(cat: str, name: str, pid: int | str, tid: int | str, ts: float, dur: float,
       args: dict) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid,
            "ts": T0 + ts, "dur": dur, "args": args}


def rank_trace(rank: int, world: int, kernels: list[tuple[str, int, float, float, float]]) -> dict:
    """One rank's Kineto trace: 3 ProfilerSteps, launches, GPU activities."""
    host_pid = 1000 + rank
    events: list[dict] = []
    for i in range(3):
        events.append(_x("user_annotation", f"ProfilerStep#{i + 1}", host_pid, host_pid,
                         i * STEP_US, STEP_US - 1.0, {"External id": i + 1}))
    for k, (name, stream, start, end, launch) in enumerate(kernels):
        corr = 100 + k
        cat = CAT.get(name, "kernel")
        api = "cudaLaunchKernel" if cat == "kernel" else (
            "cudaMemcpyAsync" if cat == "gpu_memcpy" else "cudaMemsetAsync")
        events.append(_x("cuda_runtime", api, host_pid, host_pid, launch, 4.0,
                         {"correlation": corr, "External id": 10 + k}))
        args = {"External id": 10 + k, "device": rank, "context": 1, "stream": stream,
                "correlation": corr}
        if cat == "kernel":
            args |= {"grid": [132, 1, 1], "block": [256, 1, 1]}
        else:
            args |= {"bytes": 1 << 20}
        events.append(_x(cat, name, rank, stream, start, end - start, args))
        events.append({"ph": "s", "id": corr, "pid": host_pid, "tid": host_pid,
                       "ts": T0 + launch, "cat": "ac2g", "name": "ac2g"})
        events.append({"ph": "f", "id": corr, "pid": rank, "tid": stream,
                       "ts": T0 + start, "cat": "ac2g", "name": "ac2g", "bp": "e"})
    return {
        "distributedInfo": {"backend": "nccl", "rank": rank, "world_size": world},
        "schemaVersion": 1,
        "deviceProperties": [{"id": rank, "name": "NVIDIA H200", "numSms": 132}],
        "baseTimeNanoseconds": BASE_NS,
        "traceEvents": events,
    }


def main() -> None:
    for scenario, ranks in SCENARIOS.items():
        folder = HERE / scenario
        folder.mkdir(exist_ok=True)
        for rank, kernels in ranks.items():
            trace = rank_trace(rank, len(ranks), kernels)
            (folder / f"rank-{rank}.json").write_text(json.dumps(trace, indent=1) + "\n")


if __name__ == "__main__":
    main()
