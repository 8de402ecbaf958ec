"""Clock-skew estimation and correction on hand-built multi-rank traces (answers by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from kineto_builder import TraceBuilder
from synthetic_skew import cpu_run, gpu_run, residual_errors

from overlapscope.analyzers import ReportOptions, build_report
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.skew import (
    ClockModel,
    aligned_frames,
    collective_instances,
    correct_frames,
    estimate_skew,
    manifest_injection,
    p2p_pairs,
)

ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def _by_rank(df: pl.DataFrame) -> dict[int, dict]:
    return {r["rank"]: r for r in df.to_dicts()}


def _gpu_trace(tmp_path: Path, offsets: dict[int, int], late_end: dict | None = None) -> Path:
    """Four all_reduce instances; true start 1 ms * i (+20 µs per rank), true end 1 ms * i + 50 µs.

    Rank r's clock reads true + offsets[r]. ``late_end`` {(rank, i): ns} delays one end.
    """
    run = tmp_path / "run"
    for rank, off in offsets.items():
        b = TraceBuilder(rank=rank, world_size=len(offsets))
        for i in range(1, 5):
            start = i * 1_000_000 + 20_000 * rank
            end = i * 1_000_000 + 50_000 + (late_end or {}).get((rank, i), 0)
            b.kernel(ALLREDUCE, start + off + 10_000_000, end + off + 10_000_000, stream=27)
        b.write(run / f"rank-{rank}.json")
    return run


def test_offsets_from_coinciding_collective_ends_are_exact(tmp_path: Path) -> None:
    frames = load_run(_gpu_trace(tmp_path, {0: 0, 1: 2_000_000, 2: -1_000_000}), cache=False)
    coll = collective_instances(frames)
    assert coll.height == 12 and coll["instance"].max() == 3
    res = estimate_skew(frames)
    t = _by_rank(res.table)
    assert t[0]["offset_ns"] == 0.0
    assert t[1]["offset_ns"] == pytest.approx(2_000_000, abs=1)
    assert t[2]["offset_ns"] == pytest.approx(-1_000_000, abs=1)
    assert not res.drift_fitted and t[1]["drift_ppm"] is None
    assert [t[r]["anchors_used"] for r in range(3)] == [4, 4, 4]
    # Raw: rank 2 (1 ms behind) ends 50 - 1000 µs after the instance starts: before
    # rank 0's and rank 1's starts, 4 times; rank 0 ends before rank 1 (2 ms ahead)
    # starts, 4 times; rank 1 never.
    assert [t[r]["violations_before"] for r in range(3)] == [4, 0, 4]
    assert [t[r]["violations_after"] for r in range(3)] == [0, 0, 0]


def test_one_delayed_end_is_down_weighted(tmp_path: Path) -> None:
    # rank 1's third end is 300 µs late: the Huber fit keeps the offset within 1 µs
    run = _gpu_trace(tmp_path, {0: 0, 1: 700_000}, late_end={(1, 3): 300_000})
    res = estimate_skew(load_run(run, cache=False))
    assert _by_rank(res.table)[1]["offset_ns"] == pytest.approx(700_000, abs=1_000)


def _p2p_trace(tmp_path: Path, off1: int, extra: bool = False) -> Path:
    """Rank 0 -> 1 at 1000 µs (received 30 µs later), rank 1 -> 0 at 2000 µs (30 µs).

    Times are true; rank 1's clock reads true + off1. With ``extra``, an all_reduce
    whose ends coincide under off1 + 20 µs (a biased anchor) is added.
    """
    run = tmp_path / "p2p"
    for rank in (0, 1):
        off = off1 if rank else 0
        b = TraceBuilder(rank=rank, world_size=2)

        def op(name: str, t0: int, t1: int, peer: int, b=b, off=off) -> None:
            b.cpu_op(name, t0 + off, t0 + off + 5_000, **{"Concrete Inputs": [
                "", "", str(peer), "7"], "Input Dims": [[[4]], [], [], []]})
            rng = "gloo:send" if name == "c10d::send" else "gloo:recv"
            b.annotation(rng, t0 + off + 1_000, t1 + off)

        if rank == 0:
            op("c10d::send", 1_000_000, 1_010_000, 1)
            op("c10d::recv_", 1_900_000, 2_030_000, 1)
        else:
            op("c10d::recv_", 900_000, 1_030_000, 0)
            op("c10d::send", 2_000_000, 2_010_000, 0)
        if extra:
            bias = 20_000 if rank else 0
            for i in range(3, 8):
                b.kernel(ALLREDUCE, i * 1_000_000 + off, i * 1_000_000 + 50_000 + off + bias,
                         stream=27)
        b.write(run / f"rank-{rank}.json")
    return run


def test_send_recv_pairs_give_a_two_way_estimate(tmp_path: Path) -> None:
    frames = load_run(_p2p_trace(tmp_path, 1_000_000), cache=False)
    pairs = p2p_pairs(frames)
    assert pairs.select("src_rank", "dst_rank", "tag").rows() == [(0, 1, 7), (1, 0, 7)]
    res = estimate_skew(frames)
    t = _by_rank(res.table)
    # U_01 = 2030 - 1000 = 1030 µs, U_10 = 2030 - 3000 = -970 µs: offset (1030 + 970) / 2
    assert t[1]["offset_ns"] == pytest.approx(1_000_000, abs=1)
    assert t[1]["uncertainty_ns"] > 0
    # rank 0's receive ends (2030 µs) before rank 1's send starts (3000 µs on its clock)
    assert (t[0]["violations_before"], t[1]["violations_before"]) == (1, 0)
    assert (t[0]["violations_after"], t[1]["violations_after"]) == (0, 0)


def test_causality_repair_moves_a_biased_fit_into_the_feasible_range(tmp_path: Path) -> None:
    # The collectives say 1020 µs; the 0 -> 1 message allows at most 1030 - 0 ... but
    # the 1 -> 0 message needs c1 - c0 >= send_start_1 - recv_end_0 = 3020 - 2030 = 990 µs
    # and 0 -> 1 needs c1 - c0 <= 2050 - 1000 = 1050 µs with off1 = 1020 µs: all fine, so
    # shrink the window: rank 1 clock +1020 µs, coincidence anchors biased +20 µs more.
    frames = load_run(_p2p_trace(tmp_path, 1_020_000, extra=True), cache=False)
    res = estimate_skew(frames, repair=False)
    raw_fit = _by_rank(res.table)[1]["offset_ns"]
    assert raw_fit == pytest.approx(1_040_000, abs=2_000)  # the biased collectives dominate
    # feasible: c1 - c0 <= recv_end_1 - send_start_0 = (1030 + 1020) - 1000 = 1050 µs
    #           c1 - c0 >= send_start_1 - recv_end_0 = (2000 + 1020) - 2030 = 990 µs
    # the collective ends (coinciding on true time + 20 µs) bound c1 - c0 <= 1070 µs.
    fixed = estimate_skew(frames)
    t = _by_rank(fixed.table)
    assert 990_000 <= t[1]["offset_ns"] <= 1_050_000
    assert t[1]["violations_after"] == 0 and t[0]["violations_after"] == 0


def test_a_receive_bound_violated_by_the_fit_is_repaired(tmp_path: Path) -> None:
    # bias the coincidence anchors by +80 µs: the fit lands at 1100 µs > 1050 µs allowed
    run = tmp_path / "biased"
    for rank in (0, 1):
        off = 1_020_000 if rank else 0
        b = TraceBuilder(rank=rank, world_size=2)
        if rank == 0:
            b.cpu_op("c10d::send", 1_000_000, 1_005_000, **{"Concrete Inputs": ["", "", "1", "7"]})
        else:
            b.cpu_op("c10d::recv_", 900_000 + off, 1_030_000 + off,
                     **{"Concrete Inputs": ["", "", "0", "7"]})
        for i in range(3, 8):
            bias = 80_000 if rank else 0
            b.kernel(ALLREDUCE, i * 1_000_000 + off, i * 1_000_000 + 50_000 + off + bias,
                     stream=27)
        b.write(run / f"rank-{rank}.json")
    frames = load_run(run, cache=False)
    unrepaired = _by_rank(estimate_skew(frames, repair=False).table)[1]
    assert unrepaired["offset_ns"] == pytest.approx(1_100_000, abs=1)
    t = _by_rank(estimate_skew(frames).table)[1]
    # one-way constraint: c1 - c0 <= 2050 - 1000 = 1050 µs (minus a few ns of margin)
    assert 1_049_990 <= t["offset_ns"] <= 1_050_000
    assert t["violations_after"] == 0
    assert t["uncertainty_ns"] >= 49_990  # at least the repair shift


def test_corrected_frames_shift_both_ends_and_keep_the_raw_frames(tmp_path: Path) -> None:
    frames = load_run(_gpu_trace(tmp_path, {0: 0, 1: 2_000_000}), cache=False)
    model = ClockModel({0: 0.0, 1: 500.0}, {0: 0.0, 1: 10.0}, 0)
    fixed = correct_frames(frames, model)
    raw = frames.activities.filter(pl.col("rank") == 1).row(0, named=True)
    new = fixed.activities.filter(pl.col("rank") == 1).row(0, named=True)
    ts, end = raw["ts_ns"], raw["ts_ns"] + raw["dur_ns"]
    assert new["ts_ns"] == ts - round(500 + 10e-6 * ts)
    assert new["ts_ns"] + new["dur_ns"] == end - round(500 + 10e-6 * end)
    assert frames.activities.equals(load_run(tmp_path / "run", cache=False).activities)
    assert fixed.activities.filter(pl.col("rank") == 0).equals(
        frames.activities.filter(pl.col("rank") == 0))
    assert fixed.meta["clock_model"]["ranks"]["1"] == {"offset_ns": 500.0, "drift_ppm": 10.0}


def test_align_modes(tmp_path: Path) -> None:
    frames = load_run(_gpu_trace(tmp_path, {0: 0, 1: 2_000_000}), cache=False)
    same, _ = aligned_frames(frames, "none")
    assert same is frames
    fixed, res = aligned_frames(frames, "auto")
    assert res is not None and fixed is not frames
    ends = fixed.activities.with_columns((pl.col("ts_ns") + pl.col("dur_ns")).alias("e"))
    per = ends.group_by("rank").agg(pl.col("e").sort()).sort("rank")["e"].to_list()
    assert np.max(np.abs(np.array(per[0]) - np.array(per[1]))) <= 1


def test_synthetic_gpu_run_meets_the_accuracy_target() -> None:
    frames, truth = gpu_run(16, seed=7)
    res = estimate_skew(frames)
    err = residual_errors(res.model, truth)
    assert np.percentile(err, 95) <= 5_000
    assert int(res.table["violations_before"].sum()) > 0
    assert int(res.table["violations_after"].sum()) == 0


def test_synthetic_long_run_fits_the_drift() -> None:
    frames, truth = gpu_run(8, steps=16, layers=8, seed=3)
    res = estimate_skew(frames)
    assert res.drift_fitted
    exact = truth.relative_model(0)
    for r in range(1, 8):
        assert res.model.drift_ppm[r] == pytest.approx(exact.drift_ppm[r], abs=2.0)
    assert np.percentile(residual_errors(res.model, truth), 95) <= 5_000


def test_synthetic_gloo_pipeline_with_group_ranks() -> None:
    # two pipelines [0, 1, 2, 3] and [4, 5, 6, 7]: peers are group ranks 0..3
    frames, _truth = cpu_run(8, groups=[[0, 1, 2, 3], [4, 5, 6, 7]], seed=2)
    pairs = p2p_pairs(frames)
    # per step and micro-batch: 3 forward + 3 backward messages per pipeline
    assert pairs.height == 2 * 4 * 6 * 2
    assert set(pairs.filter(pl.col("src_rank") == 5)["dst_rank"].unique()) == {4, 6}
    res = estimate_skew(frames)
    assert int(res.table["violations_after"].sum()) == 0
    assert res.table["offset_ns"].null_count() == 0


def test_report_has_a_skew_table_and_align_none_keeps_raw_times(tmp_path: Path) -> None:
    frames = load_run(_gpu_trace(tmp_path, {0: 0, 1: 2_000_000}), cache=False)
    rep = build_report(frames, ReportOptions(), tables=["skew", "stragglers"])
    assert rep.tables["skew"]["offset_ns"].to_list() == pytest.approx([0, 2_000_000], abs=1)
    assert "stragglers" in rep.tables
    single = load_run(tmp_path / "run" / "rank-0.json", cache=False)
    rep1 = build_report(single, ReportOptions(align="none"), tables=["skew"])
    assert "single rank" in rep1.not_applicable["skew"]


def test_manifest_injection_keys() -> None:
    inj = {"delay": {"rank": 5, "phase": "attn(F)", "ms": 20},
           "clock": {"3": {"offset_ns": 1500, "drift_ppm": 10.0}}}
    assert manifest_injection({"inject": inj}) == inj
    assert manifest_injection({}) == {} and manifest_injection(None) == {}
