"""Stragglers on a hand-built 3-rank trace (answers by hand) and on synthetic injected delays."""

from __future__ import annotations

from pathlib import Path

import pytest
from kineto_builder import TraceBuilder
from synthetic_skew import gpu_run

from overlapscope.analyzers import ReportOptions, build_report
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.skew import correct_frames, estimate_skew, manifest_injection
from overlapscope.analyzers.stragglers import (
    named_stragglers,
    precision_recall,
    straggler_table,
)

US = 1_000
ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL"
# rank -> (attn(F) end = arrival 0, mlp(F) end = arrival 1); every instance ends at 500 / 1000 µs
ARRIVALS = {0: (100, 900), 1: (150, 700), 2: (400, 800)}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for rank, (a0, a1) in ARRIVALS.items():
        b = TraceBuilder(rank=rank, world_size=3)
        b.annotation("ProfilerStep#0", 0, 1000 * US)
        b.annotation("attn(F)", 10 * US, a0 * US)
        b.kernel(ALLREDUCE, a0 * US, 500 * US, stream=27)
        b.annotation("mlp(F)", 500 * US, a1 * US)
        b.kernel(ALLREDUCE, a1 * US, 1000 * US, stream=27)
        b.write(run / f"rank-{rank}.json")
    return run


def test_lateness_waiting_cause_and_whatif_by_hand(tmp_path: Path) -> None:
    frames = load_run(_run(tmp_path), cache=False)
    t = straggler_table(frames)
    rows = {r["rank"]: r for r in t.to_dicts()}
    assert set(rows) == {0, 1, 2} and all(r["step"] == 0 for r in rows.values())
    assert all(r["n_collectives"] == 2 for r in rows.values())
    # lateness: instance 0 -> 0, 50, 300 µs; instance 1 -> 200, 0, 100 µs
    assert [rows[r]["mean_lateness_ns"] for r in range(3)] == [100 * US, 25 * US, 200 * US]
    assert [rows[r]["max_lateness_ns"] for r in range(3)] == [200 * US, 50 * US, 300 * US]
    # waited: instance 0 -> 300, 250, 0; instance 1 -> 0, 200, 100
    assert [rows[r]["waited_ns"] for r in range(3)] == [300 * US, 450 * US, 100 * US]
    # imposed on earlier ranks: rank 2 -> 300 + 250 (inst 0) + 100 (inst 1); rank 0 -> 200 + 100
    assert [rows[r]["others_waited_ns"] for r in range(3)] == [300 * US, 50 * US, 650 * US]
    assert [rows[r]["times_last"] for r in range(3)] == [1, 0, 1]
    # rank 2's attn(F) 390 µs vs median(90, 140) = 115 µs; rank 0's mlp(F) 400 vs median(200, 300)
    assert (rows[2]["cause_phase"], rows[2]["cause_excess_ns"]) == ("attn(F)", 275 * US)
    assert (rows[0]["cause_phase"], rows[0]["cause_excess_ns"]) == ("mlp(F)", 150 * US)
    assert rows[1]["cause_phase"] is None
    # step 1000 µs; without rank 2's lateness instance 0 starts at 150 µs: 250 µs saved
    assert [rows[r]["step_ns"] for r in range(3)] == [1000 * US] * 3
    assert [rows[r]["whatif_step_ns"] for r in range(3)] == [900 * US, 1000 * US, 750 * US]
    assert [rows[r]["straggler"] for r in range(3)] == [False, False, True]
    assert named_stragglers(t) == [(0, 2, "attn(F)")]


def test_report_table_on_the_aligned_axis(tmp_path: Path) -> None:
    rep = build_report(load_run(_run(tmp_path), cache=False), ReportOptions(),
                       tables=["stragglers", "skew"])
    t = rep.tables["stragglers"]
    assert t.filter("straggler")["rank"].to_list() == [2]
    assert rep.tables["skew"]["violations_before"].sum() == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_injected_late_rank_and_phase_are_named_after_skew_correction(seed: int) -> None:
    delay = {"rank": 5, "phase": "attn(F)", "ms": 2}
    frames, _ = gpu_run(8, seed=seed, delay=delay)
    res = estimate_skew(frames)
    named = named_stragglers(straggler_table(correct_frames(frames, res.model)))
    assert [(r, p) for _s, r, p in named] == [(5, "attn(F)")] * 3
    inj = manifest_injection(frames.meta["manifest"])
    assert precision_recall(named, inj) == {"precision": 1.0, "recall": 1.0, "named": 3.0,
                                            "correct": 3.0}


def test_no_injected_delay_names_nobody() -> None:
    frames, _ = gpu_run(8, seed=3)
    res = estimate_skew(frames)
    assert named_stragglers(straggler_table(correct_frames(frames, res.model))) == []


def test_precision_recall_counts() -> None:
    inj = {"delay": {"rank": 1, "phase": "mlp(B)", "ms": 5}}
    named = [(0, 1, "mlp(B)"), (1, 2, "mlp(B)")]
    assert precision_recall(named, inj) == {"precision": 0.5, "recall": 1.0, "named": 2.0,
                                            "correct": 1.0}
    assert precision_recall([], inj)["recall"] == 0.0
    assert precision_recall([], {})["precision"] is None
