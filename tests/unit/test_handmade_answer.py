"""The analyzers reproduce the hand-worked answer of sample_traces/handmade/README.md.

Every number here was derived by hand from the timelines drawn in that README
(and cross-checked by counting on a 0.25 us grid), not taken from the code.

Issue #7 changed one rule: rank 0's FP8 cast c5 ([90, 92] on the DeepEP stream 27)
is compute, as its name says, not comm by the stream it runs on. By hand, rank 0:
U(C) = [10, 45.5] + [55, 90] = 35.5 + 35 = 70.5; U(P) unchanged (c5 lies inside
k5 [85, 95]) = 60; O = [20, 45.5] + [60, 80] + [85, 90] = 25.5 + 20 + 5 = 50.5;
exposed 20; span 85 and idle 5 unchanged. combine(F) now holds c4 (comm 35,
hidden [60, 80] + [85, 90] = 25) and c5 (compute 2). Rank 1 is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.overlap import (
    kernel_coverage,
    overlap_by_annotation,
    overlap_by_stream,
    overlap_summary,
)

RUN = Path(__file__).resolve().parents[2] / "sample_traces" / "handmade"

#: (rank, device) -> span, compute busy, comm busy, overlap, exposed comm, idle (ns).
SUMMARY = {
    (0, 0): dict(span_ns=85_000, compute_busy_ns=60_000, comm_busy_ns=70_500,
                 overlap_ns=50_500, exposed_comm_ns=20_000, idle_ns=5_000),
    (1, 1): dict(span_ns=80_250, compute_busy_ns=40_000, comm_busy_ns=40_250,
                 overlap_ns=10_000, exposed_comm_ns=30_250, idle_ns=10_000),
}
RATIO = {(0, 0): 101 / 141, (1, 1): 40 / 161}

#: (rank, stream) -> (busy, comm busy, comm hidden under compute) in ns.
STREAMS = {
    (0, 7): (60_000, 0, 0), (0, 23): (10_000, 0, 0), (0, 27): (72_500, 70_500, 50_500),
    (1, 7): (40_000, 0, 0), (1, 13): (40_250, 40_250, 10_000), (1, 23): (5_000, 0, 0),
}

#: (rank, annotation) -> (comm busy, compute busy, comm hidden, GPU span, paired with).
ANNOTATIONS = {
    (0, "attn(F)"): (0, 30_000, 0, 30_000, None),
    (0, "dispatch(F)"): (35_500, 0, 25_500, 35_500, "attn(F)"),
    (0, "mlp(F)"): (0, 20_000, 0, 30_000, None),
    (0, "mlp(W)"): (0, 10_000, 0, 10_000, None),
    (0, "attn(B)"): (0, 10_000, 0, 10_000, None),
    (0, "combine(F)"): (35_000, 2_000, 25_000, 37_000, "mlp(F)"),
    (1, "attn(F)"): (0, 30_000, 0, 30_000, None),
    (1, "dispatch(F)"): (30_000, 0, 10_000, 30_000, "attn(F)"),
    (1, "mlp(F)"): (0, 10_000, 0, 10_000, None),
    (1, "combine(F)"): (10_250, 0, 0, 10_250, None),
}
#: The step annotation holds everything: its numbers are the per-GPU summary.
STEP = {0: (70_500, 60_000, 50_500, 85_000), 1: (40_250, 40_000, 10_000, 80_250)}

#: (rank, kernel-name prefix) -> coverage |k ∩ U(P)| / dur(k).
COVERAGE = {
    (0, "void deep_ep::layout::get_dispatch_layout"): 0.0,
    (0, "void dpsk::ep::internode::notify_dispatch"): 0.0,
    (0, "void dpsk::ep::internode::dispatch"): 51 / 55,
    (0, "void dpsk::ep::internode::combine"): 5 / 7,
    (1, "ncclDevKernel_SendRecv"): 1 / 3,
    (1, "ncclDevKernel_AllGather"): 0.0,
}


@pytest.fixture(scope="module")
def frames() -> TraceFrames:
    return load_run(RUN, cache=False)


def test_run_shape(frames: TraceFrames) -> None:
    assert frames.ranks["rank"].to_list() == [0, 1]
    assert frames.activities.height == 16
    per_rank = frames.activities.group_by("rank").len().sort("rank")["len"].to_list()
    assert per_rank == [11, 5]


def test_summary(frames: TraceFrames) -> None:
    rows = {(r["rank"], r["device"]): r for r in overlap_summary(frames).iter_rows(named=True)}
    assert set(rows) == set(SUMMARY)
    for key, expected in SUMMARY.items():
        got = {k: rows[key][k] for k in expected}
        assert got == expected, key
        assert rows[key]["overlap_ratio"] == pytest.approx(RATIO[key], abs=1e-9)


def test_by_stream(frames: TraceFrames) -> None:
    df = overlap_by_stream(frames)
    got = {
        (r["rank"], r["stream"]): (r["busy_ns"], r["comm_busy_ns"], r["overlap_ns"])
        for r in df.iter_rows(named=True)
    }
    assert got == STREAMS


def test_by_annotation(frames: TraceFrames) -> None:
    df = overlap_by_annotation(frames)
    cols = ["comm_busy_ns", "compute_busy_ns", "comm_hidden_ns", "gpu_span_ns", "paired_with"]
    rows = {(r["rank"], r["name"]): r for r in df.iter_rows(named=True)}
    assert len(rows) == df.height, "one instance of each name per rank"
    for key, expected in ANNOTATIONS.items():
        assert tuple(rows[key][c] for c in cols) == expected, key
    for rank, expected in STEP.items():
        assert tuple(rows[(rank, "ProfilerStep#1")][c] for c in cols[:4]) == expected
    # Comm annotations' hidden parts add up to the GPU's overlap (25.5 + 25 = 50.5 us).
    assert rows[(0, "dispatch(F)")]["paired_overlap_ns"] == 25_500
    assert rows[(0, "combine(F)")]["paired_overlap_ns"] == 20_000


def test_autograd_thread_kernel_belongs_to_attn_b(frames: TraceFrames) -> None:
    # flash_bwd is launched from thread 4250 while the main thread (4242) is in attn(B).
    df = overlap_by_annotation(frames)
    row = df.filter((df["rank"] == 0) & (df["name"] == "attn(B)"))
    assert row.height == 1
    assert (row["n_items"][0], row["gpu_start_ns"][0], row["compute_busy_ns"][0]) == (
        1, 85_000, 10_000
    )


def test_kernel_coverage(frames: TraceFrames) -> None:
    df = kernel_coverage(frames)
    rows = list(df.select("rank", "name", "coverage").iter_rows())
    for (rank, prefix), expected in COVERAGE.items():
        hits = [c for r, n, c in rows if r == rank and n.startswith(prefix)]
        assert len(hits) == 1, (rank, prefix)
        assert hits[0] == pytest.approx(expected, abs=1e-9), (rank, prefix)
    # Only communication kernels are listed (6 of the 16 activities; the cast is compute).
    assert len(rows) == len(COVERAGE)
