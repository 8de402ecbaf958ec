"""Issue #7 item 5: same input, same output, byte for byte.

Ties are broken on purpose in a hand-made trace (two compute annotations hide the
same amount of comm; two comm kernels have equal coverage and duration), and every
overlap/breakdown table is computed in fresh processes with 1 and 8 polars threads
and compared as CSV text.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kineto_builder import TraceBuilder

from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.overlap import (
    coverage_by_name,
    kernel_coverage,
    overlap_by_annotation,
)

ROOT = Path(__file__).resolve().parents[2]
GEMM = "void cutlass_gemm_kernel<float>(float*)"
NCCL_B = "ncclDevKernel_B_AllGather(x)"
NCCL_A = "ncclDevKernel_A_AllGather(x)"

SCRIPT = r"""
import sys
from overlapscope.analyzers import breakdown as B, overlap as ov
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.pipeline import bubble_table
for path in sys.argv[1:]:
    f = load_run(path, cache=False)
    prep = ov.prepare(f)
    tables = {
        "summary": ov.overlap_summary(f, prep=prep),
        "streams": ov.overlap_by_stream(f, prep=prep),
        "annotations": ov.overlap_by_annotation(f, prep=prep),
        "annotation_names": ov.overlap_by_annotation_name(f, prep=prep),
        "kernels": ov.kernel_coverage_by_name(f, prep=prep),
        "worst": ov.kernel_coverage(f, prep=prep),
        "windows": prep.windows,
        "temporal": B.temporal_breakdown(f, prep=prep),
        "kernel_breakdown": B.kernel_breakdown(f, prep=prep),
        "pipeline": bubble_table(f, prep=prep),
    }
    if f.is_gpu:
        tables["sm_split"] = ov.sm_split(f, prep=prep)
    for name, df in tables.items():
        sys.stdout.write(f"== {path} {name}\n")
        sys.stdout.write(df.write_csv())
"""


def _tie_trace(tmp_path: Path) -> Path:
    """Comm annotation "comm" [0, 10] us launches NCCL_B [0, 20] then NCCL_A [40, 60]
    (same length, both fully hidden). Compute annotations "zeta" then "alpha" launch a
    GEMM each, [0, 10] and [10, 20]: each hides 10 us of comm's [0, 20]."""
    tb = TraceBuilder()
    tb.annotation("ProfilerStep#1", 0, 100_000)
    tb.annotation("comm", 0, 10_000)
    tb.kernel(NCCL_B, 0, 20_000, stream=13, launch_ns=1_000)
    tb.kernel(NCCL_A, 40_000, 60_000, stream=13, launch_ns=2_000)
    tb.annotation("zeta", 10_000, 20_000)
    tb.kernel(GEMM, 0, 10_000, stream=7, launch_ns=11_000)
    tb.kernel(GEMM, 40_000, 60_000, stream=7, launch_ns=12_000)
    tb.annotation("alpha", 20_000, 30_000)
    tb.kernel(GEMM, 10_000, 20_000, stream=7, launch_ns=21_000)
    return tb.write(tmp_path / "rank-0.json")


def test_ties_are_broken_by_name(tmp_path: Path) -> None:
    """zeta hides [0, 10] + [40, 60] = 30 us of comm's runs, alpha [10, 20] = 10: zeta.
    Drop zeta's second GEMM and both hide 10 us: the tie goes to "alpha"."""
    path = _tie_trace(tmp_path)
    f = load_run(path, cache=False)
    rows = {r["name"]: r for r in overlap_by_annotation(f).iter_rows(named=True)}
    assert (rows["comm"]["paired_with"], rows["comm"]["paired_overlap_ns"]) == ("zeta", 30_000)
    tb = TraceBuilder()
    tb.annotation("comm", 0, 10_000)
    tb.kernel(NCCL_B, 0, 20_000, stream=13, launch_ns=1_000)
    tb.annotation("zeta", 10_000, 20_000)
    tb.kernel(GEMM, 0, 10_000, stream=7, launch_ns=11_000)
    tb.annotation("alpha", 20_000, 30_000)
    tb.kernel(GEMM, 10_000, 20_000, stream=7, launch_ns=21_000)
    f2 = load_run(tb.write(tmp_path / "tie" / "rank-0.json"), cache=False)
    rows = {r["name"]: r for r in overlap_by_annotation(f2).iter_rows(named=True)}
    assert (rows["comm"]["paired_with"], rows["comm"]["paired_overlap_ns"]) == ("alpha", 10_000)
    # Equal coverage (1.0) and duration (20 us): kernel rows ordered by name.
    assert coverage_by_name(kernel_coverage(f))["name"].to_list() == [NCCL_A, NCCL_B]
    assert kernel_coverage(f)["name"].to_list() == [NCCL_B, NCCL_A]  # then by start


def _run(paths: list[str], threads: int) -> str:
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *paths], capture_output=True, text=True, env=env,
        timeout=300, cwd=ROOT, check=True,
    )
    return proc.stdout


def test_tables_are_byte_identical_across_processes(tmp_path: Path) -> None:
    paths = [
        str(_tie_trace(tmp_path)),
        str(ROOT / "sample_traces" / "handmade"),
        str(ROOT / "sample_traces" / "cpu" / "dualpipe"),
        str(ROOT / "tests" / "data" / "nccl" / "h200_overlap"),
    ]
    first = _run(paths, 1)
    assert first.count("== ") >= 40
    assert _run(paths, 8) == first
