"""Schedule generators + unit-cost replay against BRIEF §1.4/§1.5 (no torch needed)."""

from __future__ import annotations

import pytest

from overlapscope.profiler.schedules import ZB1P, DualPipe, DualPipeV, OneF1B, make_schedule
from overlapscope.profiler.schedules.base import Commit, check_matching
from overlapscope.profiler.schedules.replay import (
    UNIT_COSTS,
    gantt_cells,
    peak_in_flight,
    replay_schedule,
)

# BRIEF §1.5, DualPipe N=4, M=8, transcribed by hand ("." = bubble).
BRIEF_GANTT = """
F0 F1 F2 F4 I4 . W F5 F3* B5* B5* F6* B0* B0* B6 B6 . F7* B1* B1* B7 B7 I2 W I3 W
. F0 F4 F1 F5 F2 B4 B4 F6* B0* B0* F3* B5* B5* F7* B1* B1* B6 B6 B2 B2 . I7 I3 W W
. F4 F0 F5 F1 F6 B0 B0 F2* B4* B4* F7* B1* B1* F3* B5* B5* B2 B2 B6 B6 . I3 I7 W W
F4 F5 F6 F0 I0 . W F1 F7* B1* B1* F2* B4* B4* B2 B2 . F3* B5* B5* B3 B3 I6 W I7 W
"""


def test_dualpipe_4x8_reproduces_brief_gantt() -> None:
    rep = replay_schedule(DualPipe(4, 8))
    assert rep.makespan == 26
    expected = [line.split() for line in BRIEF_GANTT.strip().splitlines()]
    assert gantt_cells(rep) == expected


# Bubble formulas of BRIEF §1.4 with F=1, B=2, W=1, F&B=3:
#   DualPipe/V: (PP/2-1)(F&B+B-3W) = (PP/2-1)*2, PP = stages (2 x devices for V)
#   1F1B: (PP-1)(F+B) = 3(PP-1);  ZB1P: (PP-1)(F+B-2W) = PP-1
@pytest.mark.parametrize(
    ("sched", "bubble"),
    [
        (DualPipe(4, 8), 2),
        (DualPipe(8, 20), 6),
        (DualPipe(2, 4), 0),
        (DualPipeV(4, 8), 6),
        (DualPipeV(4, 10), 6),
        (DualPipeV(2, 6), 2),
        (OneF1B(4, 8), 9),
        (OneF1B(8, 12), 21),
        (ZB1P(4, 8), 3),
        (ZB1P(8, 12), 7),
    ],
    ids=lambda v: v if isinstance(v, int) else f"{v.name}-{v.n_ranks}x{v.n_micro}",
)
def test_replay_idle_equals_bubble_formula(sched, bubble) -> None:
    rep = replay_schedule(sched)
    assert rep.idle == [bubble] * sched.n_ranks
    # busy = cost of the rank's share of the work (every op of every micro-batch once)
    chunks = sched.n_chunks
    per_rank_work = sched.n_micro * chunks * (UNIT_COSTS["F"] + UNIT_COSTS["B"])
    if sched.name == "dualpipe":
        per_rank_work //= 2  # each direction carries half of the micro-batches
    assert rep.busy == [per_rank_work] * sched.n_ranks


def test_peak_activations_match_brief() -> None:
    # BRIEF §1.5: PP+1 on the middle ranks (DualPipe) / last device (DualPipeV), PP elsewhere
    dp = DualPipe(8, 20)
    assert [peak_in_flight(dp.op_sequence(r)) for r in range(8)] == [8, 8, 8, 9, 9, 8, 8, 8]
    dv = DualPipeV(4, 8)
    assert [peak_in_flight(dv.op_sequence(r)) for r in range(4)] == [8, 8, 8, 9]
    assert [peak_in_flight(OneF1B(4, 8).op_sequence(r)) for r in range(4)] == [4, 3, 2, 1]


def test_dualpipe_rank0_phase_structure() -> None:
    labels = [op.label() for op in DualPipe(4, 8).op_sequence(0)]
    assert labels[:4] == ["F:mb=0:stage=0", "F:mb=1:stage=0", "F:mb=2:stage=0",
                          "F:mb=4:stage=3"]
    assert labels[4:7] == ["I:mb=4:stage=3", "W:mb=4:stage=3", "F:mb=5:stage=3"]
    assert labels[7] == "FB:mb_f=3:mb_b=5:stage_f=0:stage_b=3"


@pytest.mark.parametrize("sched", [DualPipe(4, 8), DualPipe(6, 14), DualPipeV(3, 8),
                                   OneF1B(5, 7), ZB1P(3, 4)], ids=lambda s: s.name)
def test_every_microbatch_forward_and_backward_once_per_stage(sched) -> None:
    seen_f, seen_b, n_w, n_i = [], [], 0, 0
    for r in range(sched.n_ranks):
        for op in sched.op_sequence(r):
            if op.kind in ("F", "FB"):
                seen_f.append((op.mb, op.stage))
            if op.kind in ("B", "I"):
                seen_b.append((op.mb, op.stage))
            if op.kind == "FB":
                seen_b.append((op.mb_b, op.stage_b))
            n_w += op.kind == "W"
            n_i += op.kind == "I"
    expected = sorted((m, s) for m in range(sched.n_micro) for s in range(sched.n_stages))
    assert sorted(seen_f) == expected
    assert sorted(seen_b) == expected
    assert n_w == n_i
    check_matching(sched.programs())


def test_dualpipev_turnaround_is_local() -> None:
    last = DualPipeV(4, 8).program(3)
    peers = {t.peer for ins in last if isinstance(ins, Commit) for t in ins.sends + ins.recvs}
    assert peers == {2}


@pytest.mark.parametrize(
    ("name", "n", "m", "why"),
    [
        ("dualpipe", 3, 8, "even"),
        ("dualpipe", 4, 7, "even"),
        ("dualpipe", 4, 6, ">= 2 x"),
        ("dualpipev", 4, 7, ">= 2 x"),
        ("1f1b", 4, 0, "n_micro"),
        ("gpipe", 4, 8, "unknown schedule"),
    ],
)
def test_bad_configurations_are_refused(name, n, m, why) -> None:
    with pytest.raises(ValueError, match=why):
        make_schedule(name, n, m)


def test_describe_lists_expected_sequence() -> None:
    d = DualPipe(4, 8).describe()
    assert d["n_stages"] == 4
    assert d["sequence"]["1"][:2] == ["F:mb=0:stage=1", "F:mb=4:stage=2"]
    assert len(d["sequence"]["0"]) == len(DualPipe(4, 8).op_sequence(0))
