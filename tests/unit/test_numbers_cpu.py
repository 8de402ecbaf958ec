"""Issue #7 item 6: CPU (gloo) traces are attributed by thread, comm is comm ops only.

Times in the hand-made trace are us (x1000 ns). Main thread 100, comm thread 200
(declared as the profiler's comm thread):

    main   attn(F) [0, 100]:  aten::mm [0, 30], aten::add [70, 100]
    comm   dispatch(F) [10, 90]: c10d::send [10, 20], gloo:send range [15, 50],
           c10d::recv_ [40, 45], gloo:recv range [42, 70],
           aten::add_ [60, 80] (packing), torch::autograd::GraphRoot [85, 88]
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers.classify import DEFAULT_HOST_COMM_PATTERN
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.overlap import (
    HOST_OVERLAP_DEFINITION,
    kernel_coverage,
    overlap_by_annotation,
    overlap_by_stream,
    overlap_summary,
    prepare,
)

US = 1000
MAIN, COMM = 100, 200


@pytest.fixture
def frames(tmp_path: Path) -> TraceFrames:
    tb = TraceBuilder(pid=7, main_tid=MAIN)
    tb.annotation("attn(F)", 0, 100 * US)
    tb.cpu_op("aten::mm", 0, 30 * US)
    tb.cpu_op("aten::add", 70 * US, 100 * US)
    tb.annotation("dispatch(F)", 10 * US, 90 * US, tid=COMM)
    tb.cpu_op("c10d::send", 10 * US, 20 * US, tid=COMM)
    tb.annotation("gloo:send", 15 * US, 50 * US, tid=COMM)
    tb.cpu_op("c10d::recv_", 40 * US, 45 * US, tid=COMM)
    tb.annotation("gloo:recv", 42 * US, 70 * US, tid=COMM)
    tb.cpu_op("aten::add_", 60 * US, 80 * US, tid=COMM)
    tb.cpu_op("torch::autograd::GraphRoot", 85 * US, 88 * US, tid=COMM)
    doc = tb.document()
    doc["overlapscope"] = {"comm_tid": COMM}
    path = tmp_path / "rank-0.json"
    path.write_text(json.dumps(doc))
    return load_run(path, cache=False)


def test_summary(frames: TraceFrames) -> None:
    """C = send ops and gloo ranges: U(C) = [10, 70] = 60. P = mm [0, 30], add [70, 100],
    add_ [60, 80], GraphRoot [85, 88] (comm-thread work is compute too):
    U(P) = [0, 30] + [60, 100] = 70. O = [10, 30] + [60, 70] = 30; exposed 30; no
    step annotation: span [0, 100], busy [0, 100], idle 0."""
    row = overlap_summary(frames).row(0, named=True)
    assert (row["device"], row["span_ns"], row["comm_busy_ns"], row["compute_busy_ns"]) == (
        -1, 100 * US, 60 * US, 70 * US)
    assert (row["overlap_ns"], row["exposed_comm_ns"], row["idle_ns"]) == (30 * US, 30 * US, 0)
    assert "gloo" in HOST_OVERLAP_DEFINITION


def test_annotations_are_per_thread(frames: TraceFrames) -> None:
    """dispatch(F) (comm thread) holds its thread's work only: comm [10, 70] = 60,
    compute add_ + GraphRoot = 23 (not the main thread's add [70, 100]); hidden = its
    comm under any thread's compute = [10, 30] + [60, 70] = 30. attn(F) (main) holds
    mm and add: compute 60, no comm. A gloo range holds only itself: gloo:send 35,
    hidden [15, 30] = 15; gloo:recv 28, hidden [60, 70] = 10.
    Hidden under: the only compute annotation is attn(F); dispatch(F)'s comm meets its
    compute on [10, 30] = 20, gloo:send's on [15, 30] = 15; gloo:recv [42, 70] meets
    attn(F)'s compute nowhere, so it is paired with nothing (never with a comm range).
    """
    df = overlap_by_annotation(frames)
    rows = {r["name"]: r for r in df.iter_rows(named=True)}
    cols = ("comm_busy_ns", "compute_busy_ns", "comm_hidden_ns", "paired_with",
            "paired_overlap_ns")
    got = {name: tuple(rows[name][c] for c in cols) for name in rows}
    assert got == {
        "attn(F)": (0, 60 * US, 0, None, None),
        "dispatch(F)": (60 * US, 23 * US, 30 * US, "attn(F)", 20 * US),
        "gloo:send": (35 * US, 0, 15 * US, "attn(F)", 15 * US),
        "gloo:recv": (28 * US, 0, 10 * US, None, None),
    }


def test_comm_table_lists_comm_ops_only(frames: TraceFrames) -> None:
    """Coverage |op ∩ U(P)| / dur: c10d::send [10, 20] all under mm = 1; gloo:send
    15/35; c10d::recv_ [40, 45] 0; gloo:recv [60, 70] of 28 = 10/28."""
    cov = kernel_coverage(frames)
    got = dict(zip(cov["name"].to_list(), cov["coverage"].to_list(), strict=True))
    assert got == {
        "c10d::send": pytest.approx(1.0), "gloo:send": pytest.approx(15 / 35),
        "c10d::recv_": pytest.approx(0.0), "gloo:recv": pytest.approx(10 / 28),
    }
    assert set(cov["comm_type"].to_list()) == {"c10d", "gloo"}


def test_threads_have_roles_but_keep_their_kinds(frames: TraceFrames) -> None:
    """Comm thread busy [10, 80] + [85, 88] = 73 with 60 comm: role comm. Main thread
    busy 60, no comm: compute. The comm thread's own compute stays compute."""
    df = overlap_by_stream(frames)
    rows = {r["stream"]: r for r in df.iter_rows(named=True)}
    assert (rows[COMM]["busy_ns"], rows[COMM]["comm_busy_ns"], rows[COMM]["overlap_ns"]) == (
        73 * US, 60 * US, 30 * US)
    assert (rows[COMM]["stream_role"], rows[MAIN]["stream_role"]) == ("comm", "compute")
    items = prepare(frames).items
    on_comm = items.filter(pl.col("stream") == COMM)
    assert on_comm.filter(pl.col("kind") == "compute")["dur_ns"].sum() == 23 * US


def test_dualpipe_sample_comm_and_pairing() -> None:
    """The CPU DualPipe sample: the comm table holds gloo/c10d ops only, and no
    annotation is hidden under a comm range."""
    f = load_run(Path(__file__).resolve().parents[2] / "sample_traces" / "cpu" / "dualpipe",
                 cache=False)
    prep = prepare(f)
    names = kernel_coverage(f, prep=prep)["name"].unique().to_list()
    assert names and all(re.search(DEFAULT_HOST_COMM_PATTERN, n) for n in names)
    partners = overlap_by_annotation(f, prep=prep)["paired_with"].drop_nulls().unique()
    assert not any(re.search(DEFAULT_HOST_COMM_PATTERN, p) for p in partners.to_list())
