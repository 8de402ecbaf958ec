"""Issue #7 item 3: the analysis window never silently loses work.

Hand-worked tiny traces (times in ns); the window rule is work_items.step_windows'.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers import breakdown as B
from overlapscope.analyzers.errors import WindowError
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.overlap import overlap_summary, prepare, window_warnings
from overlapscope.analyzers.pipeline import bubble_table

GEMM = "void cutlass_gemm_kernel<float>(float*)"


def _load(tb: TraceBuilder, tmp_path: Path) -> TraceFrames:
    return load_run(tb.write(tmp_path / "rank-0.json"), cache=False)


def _queued_trace(tmp_path: Path) -> TraceFrames:
    """ProfilerStep#5 on the host [10, 200] us. A [0, 30] and B [30, 60] have no launch
    record (queued before profiling started); C [100, 120] is launched at 50 (inside
    the step), D [300, 310] at 250 (after it)."""
    tb = TraceBuilder()
    tb.annotation("ProfilerStep#5", 10_000, 200_000)
    tb.kernel(GEMM, 0, 30_000, stream=7)
    tb.kernel(GEMM, 30_000, 60_000, stream=7)
    tb.kernel(GEMM, 100_000, 120_000, stream=7, launch_ns=50_000)
    tb.kernel(GEMM, 300_000, 310_000, stream=7, launch_ns=250_000)
    return _load(tb, tmp_path)


def test_queued_work_running_in_the_step_belongs_to_it(tmp_path: Path) -> None:
    """Launched inside: C -> [100, 120]. Unlaunched work inside the step's host range
    [10, 200]: A's part [10, 30] and B [30, 60]. Window = [10, 120] = 110 us (it was
    C alone, 20 us). Busy inside: 20 + 30 + 20 = 70, idle 40. Items with time in the
    window: A, B, C = 3 of 4; busy over the whole trace 30 + 30 + 20 + 10 = 90."""
    f = _queued_trace(tmp_path)
    prep = prepare(f)
    w = prep.windows.row(0, named=True)
    assert (w["win_start_ns"], w["win_end_ns"], w["from_annotation"]) == (10_000, 120_000, True)
    assert (w["n_items_in"], w["n_items_total"]) == (3, 4)
    assert (w["busy_in_ns"], w["busy_total_ns"]) == (70_000, 90_000)
    assert w["window_pattern"] == r"^ProfilerStep#\d+$"
    row = overlap_summary(f, prep=prep).row(0, named=True)
    assert (row["span_ns"], row["compute_busy_ns"], row["idle_ns"]) == (110_000, 70_000, 40_000)
    assert window_warnings(prep) == []  # 70 of 90 us is inside: nothing to warn about


def test_breakdowns_honour_the_window(tmp_path: Path) -> None:
    """Same trace. With the prepared window: temporal window 110 us, compute 70, idle
    40; kernel table: 3 instances, 20 + 30 + 20 = 70 us. Without it (HTA-style whole
    trace): window [0, 310] = 310 us, 4 instances, 90 us."""
    f = _queued_trace(tmp_path)
    prep = prepare(f)
    t = B.temporal_breakdown(f, prep=prep).row(0, named=True)
    assert (t["window_ns"], t["compute_ns"], t["idle_ns"]) == (110_000, 70_000, 40_000)
    k = B.kernel_breakdown(f, prep=prep).row(0, named=True)
    assert (k["count"], k["sum_ns"], k["min_ns"], k["max_ns"]) == (3, 70_000, 20_000, 30_000)
    whole_t = B.temporal_breakdown(f).row(0, named=True)
    assert whole_t["window_ns"] == 310_000
    whole_k = B.kernel_breakdown(f).row(0, named=True)
    assert (whole_k["count"], whole_k["sum_ns"]) == (4, 90_000)


def test_window_holding_little_work_is_reported(tmp_path: Path) -> None:
    """ProfilerStep#1 [0, 5] us launches one 4 us kernel [1000, 1004]; 16 kernels of
    100 us each are launched after it: 1 of 17 activities, 4 us of 1604 us busy."""
    tb = TraceBuilder()
    tb.annotation("ProfilerStep#1", 0, 5_000)
    tb.kernel(GEMM, 1_000_000, 1_004_000, stream=7, launch_ns=1_000)
    for i in range(16):
        start = 2_000_000 + i * 200_000
        tb.kernel(GEMM, start, start + 100_000, stream=7, launch_ns=10_000 + i)
    f = _load(tb, tmp_path)
    prep = prepare(f)
    w = prep.windows.row(0, named=True)
    assert (w["n_items_in"], w["n_items_total"]) == (1, 17)
    assert (w["busy_in_ns"], w["busy_total_ns"]) == (4_000, 1_604_000)
    (msg,) = window_warnings(prep)
    assert "rank 0 device 0" in msg
    assert "1 of 17 GPU activities" in msg
    assert "(4 µs of 1.6 ms busy)" in msg
    assert r"'^ProfilerStep#\d+$'" in msg
    assert "\n" not in msg


def test_no_step_annotation_says_the_whole_trace_is_used(tmp_path: Path) -> None:
    tb = TraceBuilder()
    tb.kernel(GEMM, 0, 10_000, stream=7, launch_ns=0)
    f = _load(tb, tmp_path)
    prep = prepare(f)
    assert not prep.windows["from_annotation"].item()
    (msg,) = window_warnings(prep)
    assert "whole trace" in msg


@pytest.mark.parametrize(
    ("pattern", "words"),
    [("([a-z", "not a valid regex"), ("^no_such_phase$", "matches no annotation")],
)
def test_bad_window_is_a_window_error(tmp_path: Path, pattern: str, words: str) -> None:
    tb = TraceBuilder()
    tb.annotation("ProfilerStep#1", 0, 5_000)
    tb.kernel(GEMM, 1_000, 2_000, stream=7, launch_ns=1_000)
    f = _load(tb, tmp_path)
    with pytest.raises(WindowError) as info:
        prepare(f, window=pattern)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert words in msg and pattern in msg and "\n" not in msg


def _pipeline_trace(tmp_path: Path) -> TraceFrames:
    """Step 1 [0, 100] us: 1f1b:F:mb=0 [0, 10] launches [1, 21]; 1f1b:B:mb=0 [20, 30]
    launches [30, 50]. Step 2 [100, 200]: 1f1b:F:mb=1 [100, 110] launches [101, 121]."""
    tb = TraceBuilder()
    tb.annotation("ProfilerStep#1", 0, 100_000)
    tb.annotation("1f1b:F:mb=0:stage=0", 0, 10_000)
    tb.kernel(GEMM, 1_000, 21_000, stream=7, launch_ns=1_000)
    tb.annotation("1f1b:B:mb=0:stage=0", 20_000, 30_000)
    tb.kernel(GEMM, 30_000, 50_000, stream=7, launch_ns=21_000)
    tb.annotation("ProfilerStep#2", 100_000, 200_000)
    tb.annotation("1f1b:F:mb=1:stage=0", 100_000, 110_000)
    tb.kernel(GEMM, 101_000, 121_000, stream=7, launch_ns=101_000)
    return _load(tb, tmp_path)


def test_pipeline_honours_the_window(tmp_path: Path) -> None:
    """Window ^ProfilerStep#1$ = [1, 50] us: only step 1's two ops, busy 20 + 20 = 40,
    window 49, bubble 9. Without a window both steps appear."""
    f = _pipeline_trace(tmp_path)
    whole = bubble_table(f)
    assert sorted(whole["step"].to_list()) == [1, 2]
    got = bubble_table(f, prep=prepare(f, window=r"^ProfilerStep#1$"))
    assert got["step"].to_list() == [1]
    row = got.row(0, named=True)
    assert (row["n_ops"], row["window_ns"], row["busy_ns"], row["bubble_ns"]) == (
        2, 49_000, 40_000, 9_000)
