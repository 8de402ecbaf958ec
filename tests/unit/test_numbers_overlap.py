"""Issue #7 items 1-2: hidden means under compute kernels; comm is what communicates.

Tiny traces built with kineto_builder; times are ns, every expected number is
worked out by hand in the comment above its assertion (BRIEF.md §4: C = comm,
P = compute kernels, M = memcpy/memset not issued by comm).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers.classify import classify_frames
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.overlap import (
    OVERLAP_DEFINITION,
    kernel_coverage,
    overlap_by_stream,
    overlap_summary,
    prepare,
    sm_split,
)

GEMM = "void cutlass_gemm_kernel<float>(float*)"
NCCL = "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)"


def _load(tb: TraceBuilder, tmp_path: Path) -> TraceFrames:
    return load_run(tb.write(tmp_path / "rank-0.json"), cache=False)


def _row(df: pl.DataFrame) -> dict:
    assert df.height == 1
    return df.row(0, named=True)


def test_memcpy_beside_comm_is_not_hidden(tmp_path: Path) -> None:
    """GEMM s7 [0, 40] us; NCCL s13 [20, 100]; DtoH copy s21 [30, 70] and memset s21
    [90, 95], both launched outside any comm op.

    U(C) = 80, U(P) = 40, O = |[20, 40]| = 20 (the copy hides nothing), ratio 0.25,
    exposed 60. U(M) = 40 + 5 = 45; C ∩ M = [30, 70] + [90, 95], minus U(P) =
    [40, 70] + [90, 95] = 35 = overlap_memory_ns. Span [0, 100], all busy: idle 0.
    (The old definition, P = everything not comm, said O = [20, 70] + [90, 95] = 55.)
    """
    tb = TraceBuilder()
    tb.annotation("ProfilerStep#1", 0, 10_000)
    tb.kernel(GEMM, 0, 40_000, stream=7, launch_ns=1_000)
    tb.kernel(NCCL, 20_000, 100_000, stream=13, launch_ns=2_000)
    tb.kernel("Memcpy DtoH (Device -> Pinned)", 30_000, 70_000, stream=21, cat="gpu_memcpy",
              launch_ns=3_000)
    tb.kernel("Memset (Device)", 90_000, 95_000, stream=21, cat="gpu_memset", launch_ns=4_000)
    f = _load(tb, tmp_path)
    row = _row(overlap_summary(f))
    assert (row["span_ns"], row["comm_busy_ns"], row["compute_busy_ns"], row["overlap_ns"]) == (
        100_000, 80_000, 40_000, 20_000)
    assert row["overlap_ratio"] == pytest.approx(0.25)
    assert (row["exposed_comm_ns"], row["idle_ns"]) == (60_000, 0)
    assert (row["memory_busy_ns"], row["overlap_memory_ns"]) == (45_000, 35_000)
    assert row["exposed_fraction"] == pytest.approx(0.6)
    # Per kernel: the NCCL kernel is 20 of 80 under compute; copies are not listed.
    cov = kernel_coverage(f)
    assert cov["name"].to_list() == [NCCL]
    assert (cov["hidden_ns"].item(), cov["coverage"].item()) == (20_000, pytest.approx(0.25))
    streams = {r["stream"]: r for r in overlap_by_stream(f).iter_rows(named=True)}
    assert (streams[13]["comm_busy_ns"], streams[13]["overlap_ns"]) == (80_000, 20_000)
    assert streams[21]["comm_busy_ns"] == 0
    assert "memcpy/memset are not compute" in OVERLAP_DEFINITION


def test_cast_kernel_on_deepep_stream_is_compute(tmp_path: Path) -> None:
    """s27 (DeepEP stream): dispatch [0, 50], FP8 cast [50, 60], combine [60, 70], a DtoD
    copy [70, 75] launched outside comm. s13: a DtoD copy launched inside
    record_param_comms [85, 90]. s7: GEMM [40, 80].

    C = dispatch, combine, the NCCL copy: U(C) = 50 + 10 + 5 = 65. P = cast + GEMM:
    U(P) = [40, 80] = 40. O = [40, 50] + [60, 70] = 20. M = the s27 copy, inside the
    GEMM: overlap_memory 0. Span [0, 90]; busy [0, 80] + [85, 90] = 85: idle 5.
    Stream 27 is busy [0, 75] = 75 with 60 of comm (>= half): a comm stream, yet its
    cast stays compute and its copy memory.
    """
    tb = TraceBuilder()
    tb.annotation("ProfilerStep#1", 0, 20_000)
    tb.kernel("void deep_ep::internode::dispatch<8>(int*)", 0, 50_000, stream=27,
              launch_ns=1_000, grid=(20, 1, 1))
    tb.kernel("void per_token_cast_to_fp8<float>(float*)", 50_000, 60_000, stream=27,
              launch_ns=2_000, grid=(132, 1, 1))
    tb.kernel("void deep_ep::internode::combine<8>(int*)", 60_000, 70_000, stream=27,
              launch_ns=3_000, grid=(20, 1, 1))
    tb.kernel("Memcpy DtoD (Device -> Device)", 70_000, 75_000, stream=27, cat="gpu_memcpy",
              launch_ns=4_000)
    tb.cpu_op("record_param_comms", 5_000, 7_000)
    tb.kernel("Memcpy DtoD (Device -> Device)", 85_000, 90_000, stream=13, cat="gpu_memcpy",
              launch_ns=6_000)
    tb.kernel(GEMM, 40_000, 80_000, stream=7, launch_ns=8_000, grid=(112, 1, 1))
    f = _load(tb, tmp_path)
    acts = classify_frames(f).activities
    kinds = {(r["stream"], r["name"].split("<")[0]): (r["kind"], r["rule"])
             for r in acts.iter_rows(named=True)}
    assert kinds[(27, "void per_token_cast_to_fp8")] == ("compute", "kernel-default")
    assert kinds[(27, "Memcpy DtoD (Device -> Device)")] == ("memory", "memcpy")
    assert kinds[(13, "Memcpy DtoD (Device -> Device)")] == ("comm", "launched-in-comm-op")
    row = _row(overlap_summary(f))
    assert (row["comm_busy_ns"], row["compute_busy_ns"], row["overlap_ns"]) == (
        65_000, 40_000, 20_000)
    assert (row["overlap_memory_ns"], row["span_ns"], row["idle_ns"]) == (0, 90_000, 5_000)
    streams = {r["stream"]: r for r in overlap_by_stream(f).iter_rows(named=True)}
    assert (streams[27]["busy_ns"], streams[27]["comm_busy_ns"]) == (75_000, 60_000)
    assert streams[27]["stream_role"] == "comm"
    assert streams[7]["stream_role"] == "compute"
    assert streams[13]["stream_role"] == "comm"
    # The kernels table lists what communicates: never the cast.
    names = set(kernel_coverage(f)["name"].to_list())
    assert not any("cast" in n for n in names)
    assert len(names) == 3
    # SM split still finds the DeepEP grid (20) and the GEMM cap (112).
    split = _row(sm_split(f, prep=prepare(f)))
    assert (split["comm_sms"], split["compute_cap_sms"]) == (20, 112)


def test_copies_sharing_a_stream_with_nccl_stay_memory(tmp_path: Path) -> None:
    """B200 pattern: one all_gather [0, 2] us and three plain copies [2, 10], [10, 20],
    [20, 30] on the same stream. Comm busy is the all_gather's 2 us, not 30; the
    stream is a compute stream (2 of 30 us is comm)."""
    tb = TraceBuilder()
    tb.kernel(NCCL, 0, 2_000, stream=13, launch_ns=0)
    for i, (a, b) in enumerate([(2_000, 10_000), (10_000, 20_000), (20_000, 30_000)]):
        tb.kernel("Memcpy DtoD (Device -> Device)", a, b, stream=13, cat="gpu_memcpy",
                  launch_ns=100 + i)
    f = _load(tb, tmp_path)
    row = _row(overlap_summary(f))
    assert (row["comm_busy_ns"], row["memory_busy_ns"], row["overlap_ns"]) == (2_000, 28_000, 0)
    assert _row(overlap_by_stream(f))["stream_role"] == "compute"
