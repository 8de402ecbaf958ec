"""Temporal / kernel breakdowns and HTA-compat rules on tiny hand-made frames.

Every expected number is worked out by hand in the test's docstring or comment.
"""

from __future__ import annotations

import math
from dataclasses import replace

import polars as pl
import pytest

from overlapscope.analyzers import breakdown as B
from overlapscope.analyzers import frames as F
from overlapscope.analyzers.hta_compat import hta_compat_frames, hta_kind

US = 1000
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32"
NCCL = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
DTOH = "Memcpy DtoH (Device -> Pinned)"
CAT = {DTOH: "gpu_memcpy", "Memset (Device)": "gpu_memset"}


def act(name: str, start: int, end: int, *, stream: int = 7, rank: int = 0, device: int = 0,
        corr: int | None = None) -> dict:
    """One activity row; times in ns."""
    return {"rank": rank, "device": device, "stream": stream, "cat": CAT.get(name, "kernel"),
            "name": name, "ts_ns": start, "dur_ns": end - start, "correlation": corr}


def make_frames(acts: list[dict], *, annotations: list[dict] | None = None,
                cpu_ops: list[dict] | None = None, origin_ns: int = 0,
                meta: dict | None = None) -> F.TraceFrames:
    ranks = sorted({a["rank"] for a in acts}) or [0]
    return F.TraceFrames(
        activities=pl.DataFrame(acts, schema=F.ACTIVITIES_SCHEMA) if acts
        else F.empty(F.ACTIVITIES_SCHEMA),
        cpu_ops=pl.DataFrame(cpu_ops or [], schema=F.CPU_OPS_SCHEMA),
        annotations=pl.DataFrame(annotations or [], schema=F.ANNOTATIONS_SCHEMA),
        comm_meta=F.empty(F.COMM_META_SCHEMA),
        warp_events=F.empty(F.WARP_EVENTS_SCHEMA),
        counters=F.empty(F.COUNTERS_SCHEMA),
        ranks=pl.DataFrame([{"rank": r, "origin_ns": 0} for r in ranks], schema=F.RANKS_SCHEMA),
        meta={"origin_ns": origin_ns, **(meta or {})},
    )


# compute [0,100), comm [50,150) on its own stream, copies [140,200) and [300,310).
BASIC = [
    act(GEMM, 0, 100),
    act(NCCL, 50, 150, stream=20),
    act(DTOH, 140, 200, stream=30),
    act(DTOH, 300, 310, stream=30),
]


def test_temporal_precedence_compute_comm_memory_idle() -> None:
    """Window [0,310): compute 100; comm only [100,150) = 50; memory only [150,200) +
    [300,310) = 60; idle 310 - 210 = 100; non-compute 110."""
    t = B.temporal_breakdown(make_frames(BASIC)).row(0, named=True)
    assert (t["window_start_ns"], t["window_end_ns"], t["window_ns"]) == (0, 310, 310)
    assert (t["compute_ns"], t["comm_ns"], t["memory_ns"], t["other_ns"], t["idle_ns"]) == (
        100, 50, 60, 0, 100)
    assert t["non_compute_ns"] == 110
    assert t["compute_pct"] == pytest.approx(100 * 100 / 310)
    assert t["idle_pct"] == pytest.approx(100 * 100 / 310)
    total = sum(t[f"{k}_pct"] for k in ("compute", "comm", "memory", "other", "idle"))
    assert total == pytest.approx(100.0)


def test_temporal_is_per_device_by_default_and_per_rank_in_compat() -> None:
    """Device 1 runs one 40-ns GEMM at [1000,1040): its own row by default; HTA merges
    it into rank 0 (window [0,1040), compute 100 + 40)."""
    frames = make_frames([*BASIC, act(GEMM, 1000, 1040, device=1)])
    t = B.temporal_breakdown(frames)
    assert t.select("rank", "device", "window_ns", "compute_ns").rows() == [
        (0, 0, 310, 100), (0, 1, 40, 40)]
    # Compat mode without launches/steps: no filter; ns times round to whole us,
    # so use us-sized activities there.
    us = make_frames([act(GEMM, 0, 100 * US), act(GEMM, 1000 * US, 1040 * US, device=1)])
    c = B.temporal_breakdown(us, hta_compat=True)
    assert c.select("rank", "device", "window_ns", "compute_ns", "idle_ns").rows() == [
        (0, None, 1040 * US, 140 * US, 900 * US)]


def test_kernel_breakdown_statistics() -> None:
    """GEMM 100, 200, 600 ns: count 3, sum 900, mean 300, min 100, max 600, sample std
    sqrt((200^2 + 100^2 + 300^2) / 2) = sqrt(70000); the elementwise kernel (100) makes
    the compute total 1000, so GEMM is 90 %. A single instance has std 0."""
    ew = "void at::native::vectorized_elementwise_kernel<4>"
    frames = make_frames([act(GEMM, 0, 100), act(GEMM, 200, 400), act(GEMM, 500, 1100),
                          act(ew, 1200, 1300), act(NCCL, 0, 50, stream=20)])
    k = B.kernel_breakdown(frames)
    gemm = k.filter(pl.col("name") == GEMM).row(0, named=True)
    assert (gemm["kind"], gemm["count"], gemm["sum_ns"], gemm["min_ns"], gemm["max_ns"]) == (
        "compute", 3, 900, 100, 600)
    assert gemm["mean_ns"] == pytest.approx(300.0)
    assert gemm["std_ns"] == pytest.approx(math.sqrt(70000))
    assert gemm["pct_of_kind"] == pytest.approx(90.0)
    nccl = k.filter(pl.col("name") == NCCL).row(0, named=True)
    assert (nccl["kind"], nccl["comm_type"], nccl["std_ns"], nccl["pct_of_kind"]) == (
        "comm", "nccl", 0.0, 100.0)
    assert k["kind"].to_list() == ["comm", "compute", "compute"]  # sorted, largest first


def test_kind_combinations_by_hand() -> None:
    """compute [0,100), comm [50,150), copy [120,130): exactly compute [0,50) = 50,
    compute+comm [50,100) = 50, comm [100,120) + [130,150) = 40, comm+memory 10."""
    frames = make_frames([act(GEMM, 0, 100), act(NCCL, 50, 150, stream=20),
                          act(DTOH, 120, 130, stream=30)])
    got = dict(B.kind_combination_breakdown(frames).select("kinds", "time_ns").rows())
    assert got == {"compute": 50, "compute+comm": 50, "comm": 40, "comm+memory": 10}
    pct = B.kind_combination_breakdown(frames).filter(pl.col("kinds") == "comm")["pct"][0]
    assert pct == pytest.approx(100 * 40 / 150)


def test_comm_comp_overlap_and_nan_without_comm() -> None:
    """BASIC: comm [50,150) = 100 ns, covered by compute on [50,100) = 50 -> 50 %."""
    o = B.comm_comp_overlap(make_frames(BASIC)).row(0, named=True)
    assert (o["comm_ns"], o["overlapped_ns"], o["overlap_pct"]) == (100, 50, 50.0)
    none = B.comm_comp_overlap(make_frames([act(GEMM, 0, 100)])).row(0, named=True)
    assert none["comm_ns"] == 0 and math.isnan(none["overlap_ratio"])


def test_empty_activities_give_empty_frames_with_schema() -> None:
    frames = make_frames([])
    assert B.temporal_breakdown(frames).schema == pl.Schema(B.TEMPORAL_SCHEMA)
    assert B.kernel_breakdown(frames).is_empty()
    assert B.comm_comp_overlap(frames, hta_compat=True).is_empty()


@pytest.mark.parametrize(("name", "kind"), [
    ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "comm"),
    ("ncclKernel_AllReduce_RING_LL_Sum_float", "comm"),
    ("ncclFooNoK", "compute"),  # NCCL-ish but no "Kernel": HTA computes it
    ("NCCLDevKernel_Upper", "compute"),  # case-sensitive, anchored
    ("void deep_ep::internode::dispatch<false, 8>(int*)", "compute"),
    ("Memcpy DtoD (Device -> Device)", "memory"),
    ("Memset (Device)", "memory"),
    ("dma_copy", "memory"),
    ("void my_cudaMemcpy_kernel()", "other"),  # contains Memcpy, not at the start
    ("cudaStreamSync_like_kernel", "other"),  # contains Sync
    ("gemm_Memset_kernel", "compute"),  # Memset only excluded at the start
])
def test_hta_kernel_types(name: str, kind: str) -> None:
    got = pl.DataFrame({"name": [name]}).select(hta_kind(pl.col("name")).alias("k"))["k"][0]
    assert got == kind


def test_hta_rounding_on_the_files_microsecond_grid() -> None:
    """Start up, end down to whole us of the file's clock (frame ns + origin).

    origin = 7 us + 300 ns. Frame ts 700 ns is file time 8.000 us: a [8, 9) us
    kernel of 1000 ns stays as it is. Frame ts 100_250 (file 107.55 us) with dur
    300_500 (end file 408.05 us) becomes [108, 408) us: ts 100_700, dur 300_000.
    A 750-ns event at frame 650_125 (file 657.425 .. 658.175) crosses 658:
    [658, 658) -> dur 0. One at frame 660_000 (file 667.3 .. 668.05, 750 ns) gives
    [668, 668) too; one at 670_100 (file 677.4 .. 677.9) gives [678, 677): -1 us.
    """
    origin = 7 * US + 300
    acts = [act(GEMM, 700, 1700), act(GEMM, 100_250, 400_750),
            act("Memset (Device)", 650_125, 650_875), act("Memset (Device)", 660_000, 660_750),
            act("Memset (Device)", 670_100, 670_600)]
    c = hta_compat_frames(make_frames(acts, origin_ns=origin)).activities
    assert c.select("ts_ns", "dur_ns").rows() == [
        (700, 1000), (100_700, 300_000), (650_700, 0), (660_700, 0), (670_700, -1000)]
    assert c["kind"].to_list() == ["compute", "compute", "memory", "memory", "memory"]


def _step(name: str, start_us: int, dur_us: int, on_gpu: bool = False) -> dict:
    return {"rank": 0, "pid": "0" if on_gpu else "1", "tid": "7" if on_gpu else "1",
            "name": name, "ts_ns": start_us * US, "dur_ns": dur_us * US, "on_gpu": on_gpu}


def _launch(corr: int, at_us: int) -> dict:
    return {"rank": 0, "pid": "1", "tid": "1", "cat": "cuda_runtime",
            "name": "cudaLaunchKernel", "ts_ns": at_us * US, "dur_ns": 4 * US,
            "correlation": corr}


def test_hta_last_step_filter_by_launch_time() -> None:
    """Steps #1 [0,1000) and #2 [1000,2000) us on the CPU; the GPU mirror of #2 starts
    at 1500, so HTA's 'last step start' is 1500. Launches: corr 1 at 500 (two host
    rows: the kernel is duplicated), corr 2 at 1200 (kept: before 1500), corr 3 at
    1600 (dropped). A kernel without correlation starting at 1400 us survives (HTA
    files it with the host rows), one at 1700 does not. corr 4 has no launch."""
    steps = [_step("ProfilerStep#1", 0, 1000), _step("ProfilerStep#2", 1000, 1000),
             _step("ProfilerStep#2", 1500, 300, on_gpu=True)]
    ops = [_launch(1, 500), _launch(1, 500), _launch(2, 1200), _launch(3, 1600)]
    acts = [act(GEMM, 600 * US, 700 * US, corr=1), act(GEMM, 1900 * US, 2100 * US, corr=2),
            act(GEMM, 1650 * US, 1660 * US, corr=3), act(GEMM, 1400 * US, 1410 * US),
            act(GEMM, 1700 * US, 1710 * US), act(GEMM, 10 * US, 20 * US, corr=4)]
    frames = make_frames(acts, annotations=steps, cpu_ops=ops)
    kept = hta_compat_frames(frames).activities
    assert sorted(kept["ts_ns"].to_list()) == [600 * US, 600 * US, 1400 * US, 1900 * US]
    # include_last_profiler_step: every launched kernel (corr 1 twice, 2, 3) + orphans.
    all_kept = hta_compat_frames(frames, include_last_profiler_step=True).activities
    assert sorted(all_kept["ts_ns"].to_list()) == [
        600 * US, 600 * US, 1400 * US, 1650 * US, 1700 * US, 1900 * US]
    # One step name only: HTA filters nothing.
    single = make_frames(acts, annotations=steps[:1], cpu_ops=ops)
    assert hta_compat_frames(single).activities.height == len(acts)


def test_compat_reproduces_htas_negative_interval_arithmetic() -> None:
    """Already-rounded compat frames (meta hta_compat): compute [0,10) us, memory
    [12,15), and two 1-us-negative memsets: [6,5) inside the compute run and [21,20)
    after everything.

    HTA temporal (one merge of all events, sorted by start): [0,10] absorbs [6,5];
    [12,15]; [21,20] opens its own group: busy 10 + 3 - 1 = 12; kernel_time = end
    of last group (20) - 0 = 20; idle 8; compute 10; non-compute 20 - 10 - 8 = 2.
    HTA type sweep (one merge per type, +bit/-bit): memory's own merge leaves both
    negatives standing. Over [5,6) running = 1 (compute) - 4 < 0: that microsecond
    leaves "compute"; over [20,21) nothing else runs. Table: compute 9, memory 3.
    """
    acts = [act(GEMM, 0, 10 * US), act(DTOH, 12 * US, 15 * US, stream=30),
            act("Memset (Device)", 6 * US, 5 * US, stream=30),
            act("Memset (Device)", 21 * US, 20 * US, stream=30)]
    frames = make_frames(acts, meta={"hta_compat": True})
    frames = replace(frames, activities=frames.activities.with_columns(
        pl.Series("kind", ["compute", "memory", "memory", "memory"]),
        pl.Series("comm_type", [None] * 4, dtype=pl.Utf8)))
    t = B.temporal_breakdown(frames, hta_compat=True).row(0, named=True)
    assert (t["window_ns"], t["idle_ns"], t["compute_ns"], t["non_compute_ns"]) == (
        20 * US, 8 * US, 10 * US, 2 * US)
    table = dict(B.kind_combination_breakdown(frames, hta_compat=True)
                 .select("kinds", "time_ns").rows())
    assert table == {"compute": 9 * US, "memory": 3 * US}
