"""analyzers/pipeline.py on hand-built annotation frames with hand-computed answers."""

from __future__ import annotations

import polars as pl
import pytest

from overlapscope.analyzers import frames as F
from overlapscope.analyzers.pipeline import bubble_table, op_table

US = 1000  # ns per µs


def make_frames(rows: list[tuple[int, str, int, int]], meta: dict | None = None) -> F.TraceFrames:
    """rows: (rank, name, start_us, end_us) CPU annotations."""
    ann = pl.DataFrame(
        [{"rank": r, "pid": str(100 + r), "tid": "1", "name": n, "ts_ns": s * US,
          "dur_ns": (e - s) * US, "external_id": None, "on_gpu": False, "device": None,
          "stream": None} for r, n, s, e in rows],
        schema=F.ANNOTATIONS_SCHEMA,
    )
    return F.TraceFrames(
        activities=F.empty(F.ACTIVITIES_SCHEMA), cpu_ops=F.empty(F.CPU_OPS_SCHEMA),
        annotations=ann, comm_meta=F.empty(F.COMM_META_SCHEMA),
        warp_events=F.empty(F.WARP_EVENTS_SCHEMA), counters=F.empty(F.COUNTERS_SCHEMA),
        ranks=F.empty(F.RANKS_SCHEMA), meta=meta or {},
    )


# 1F1B, PP=2, M=2, drawn by hand (µs):
#   rank 0: F0 [0,10) F1 [10,20)            B0 [44,64)      B1 [74,94)
#   rank 1:       F0 [12,22) B0 [22,42) F1 [42,52) B1 [52,72)
ONE_F1B = [
    (0, "ProfilerStep#3", 0, 95), (1, "ProfilerStep#3", 0, 95),
    (0, "1f1b:F:mb=0:stage=0", 0, 10), (0, "1f1b:F:mb=1:stage=0", 10, 20),
    (0, "pp_send", 20, 21), (0, "gloo:send", 20, 21),
    (0, "1f1b:B:mb=0:stage=0", 44, 64), (0, "1f1b:B:mb=1:stage=0", 74, 94),
    (1, "1f1b:F:mb=0:stage=1", 12, 22), (1, "1f1b:B:mb=0:stage=1", 22, 42),
    (1, "1f1b:F:mb=1:stage=1", 42, 52), (1, "1f1b:B:mb=1:stage=1", 52, 72),
    (1, "1f1b:F:mb=1:stage", 0, 1),  # malformed: ignored
]
EXPECTED_1F1B = {"overlapscope": {"schedule": {"name": "1f1b", "sequence": {
    "0": ["F:mb=0:stage=0", "F:mb=1:stage=0", "B:mb=0:stage=0", "B:mb=1:stage=0"],
    "1": ["F:mb=0:stage=1", "B:mb=0:stage=1", "F:mb=1:stage=1", "B:mb=1:stage=1"],
}}}}


def test_bubble_by_hand_1f1b() -> None:
    t = bubble_table(make_frames(ONE_F1B, EXPECTED_1F1B))
    assert t["rank"].to_list() == [0, 1]
    assert t["step"].to_list() == [3, 3]
    # window [0, 94) µs on both ranks; busy 10+10+20+20 = 60 µs each
    assert t["window_ns"].to_list() == [94 * US, 94 * US]
    assert t["busy_ns"].to_list() == [60 * US, 60 * US]
    assert t["bubble_ns"].to_list() == [34 * US, 34 * US]
    assert t["bubble_fraction"][0] == pytest.approx(34 / 94)
    # T_F = 10, T_B = 20 -> (PP-1)(T_F+T_B) = 30 µs
    assert t["pp"][0] == 2
    assert t["theory_bubble_ns"][0] == pytest.approx(30 * US)
    assert t["measured_over_theory"][0] == pytest.approx(34 / 30)
    assert t["delta_ns"][0] == pytest.approx(4 * US)
    # rank 0 holds two forwards before its first backward; rank 1 one
    assert t["peak_activations"].to_list() == [2, 1]
    assert t["activation_bound"][0] == 2
    assert t["conforms"].to_list() == [True, True]


def test_first_divergence_reported() -> None:
    swapped = [r for r in ONE_F1B if r[0] == 0] + [
        (1, "1f1b:F:mb=0:stage=1", 12, 22), (1, "1f1b:F:mb=1:stage=1", 22, 32),
        (1, "1f1b:B:mb=0:stage=1", 32, 52), (1, "1f1b:B:mb=1:stage=1", 52, 72),
    ]
    t = bubble_table(make_frames(swapped, EXPECTED_1F1B))
    r1 = t.filter(pl.col("rank") == 1).row(0, named=True)
    assert (r1["first_divergence"], r1["expected_op"], r1["observed_op"]) == (
        1, "B:mb=0:stage=1", "F:mb=1:stage=1")
    assert not r1["conforms"]
    short = [r for r in ONE_F1B if r[1] != "1f1b:B:mb=1:stage=0"]
    t = bubble_table(make_frames(short, EXPECTED_1F1B))
    r0 = t.filter(pl.col("rank") == 0).row(0, named=True)
    assert (r0["first_divergence"], r0["expected_op"], r0["observed_op"]) == (
        3, "B:mb=1:stage=0", None)


def test_fb_pairs_and_steps_without_profiler_steps() -> None:
    # DualPipe-style: one rank, two steps, FB pair with both stages; no ProfilerStep
    rows = []
    for k, base in enumerate((0, 100)):
        rows += [
            (0, "dualpipe:F:mb=0:stage=0", base + 0, base + 10),
            (0, "dualpipe:FB:mb_f=1:mb_b=2:stage_f=0:stage_b=1", base + 10, base + 40),
            (0, "dualpipe:I:mb=0:stage=0", base + 45, base + 55),
            (0, "dualpipe:W:mb=0:stage=0", base + 55, base + 60 + k),
        ]
    ops = op_table(make_frames(rows))
    assert ops["step"].to_list() == [0, 0, 0, 0, 1, 1, 1, 1]
    fb = ops.filter(pl.col("op") == "FB").row(0, named=True)
    assert (fb["mb"], fb["mb_b"], fb["stage"], fb["stage_b"]) == (1, 2, 0, 1)
    t = bubble_table(make_frames(rows))
    # step 0: window 60, busy 10+30+10+5 = 55; step 1: window 61, busy 56
    assert t["bubble_ns"].to_list() == [5 * US, 5 * US]
    # T_F=10, T_FB=30, T_W=5.5, no full B -> T_B = T_I + T_W = 15.5; PP = 2 stages
    assert t["theory_bubble_ns"][0] == pytest.approx((2 / 2 - 1) * (30 + 15.5 - 16.5) * US)
    # F +1, FB net 0, I -1
    assert t["peak_activations"].to_list() == [1, 1]


def test_no_schedule_ops_gives_empty_table() -> None:
    frames = make_frames([(0, "ProfilerStep#1", 0, 5), (0, "attn(F)", 1, 2)])
    assert bubble_table(frames).height == 0


def test_dualpipe_replay_trace_matches_formula() -> None:
    # Second method: the unit-cost replay of the generator, written as annotations
    # (1 unit = 1 µs, two steps 100 µs apart), must give the BRIEF §1.4 numbers.
    from overlapscope.profiler.schedules import DualPipe
    from overlapscope.profiler.schedules.replay import replay_schedule

    sched = DualPipe(4, 8)
    rep = replay_schedule(sched)
    rows = [(r, tm.op.annotation("dualpipe"), base + int(tm.start), base + int(tm.end))
            for base in (0, 100) for r, tl in enumerate(rep.timelines) for tm in tl]
    meta = {"overlapscope": {"schedule": sched.describe()}}
    t = bubble_table(make_frames(rows, meta))
    assert t.height == 8
    assert set(t["bubble_ns"].to_list()) == {2 * US}  # (PP/2-1)(F&B+B-3W) = 2
    assert t["theory_bubble_ns"][0] == pytest.approx(2 * US)
    assert t["window_ns"][0] == 26 * US
    assert t.filter(pl.col("step") == 0)["peak_activations"].to_list() == [4, 5, 5, 4]
    assert t["activation_bound"][0] == 5
    assert t["conforms"].all()
