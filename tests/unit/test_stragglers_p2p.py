"""Stragglers named from point-to-point waits: a hand-built 3-rank pipeline (answers by
hand) and synthetic gloo pipelines with an injected slow phase."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from kineto_builder import TraceBuilder
from synthetic_skew import cpu_run

from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.skew import correct_frames, estimate_skew, manifest_injection
from overlapscope.analyzers.stragglers import (
    STRAGGLER_MIN_SAVING,
    named_stragglers,
    p2p_waits,
    precision_recall,
    straggler_table,
)

US = 1_000


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def _pipeline(tmp_path: Path) -> Path:
    """Three ranks, one step [0, 1000] µs, one host clock (no skew). Times in µs:

    rank 0: fwd [0, 100]; send -> 1 at 100; posts recv <- 2 at 150 (op ends 155), idle,
            data waited for until 720
    rank 1: posts recv <- 0 at 10 (op ends 15), idle until the data (130);
            fwd [130, 530] (slow: 400 against 100 on ranks 0 and 2); send -> 2 at 530
    rank 2: posts recv <- 1 at 20, works on ``prep`` [25, 200], then blocks until 550;
            fwd [550, 650]; send -> 0 at 700
    """
    run = tmp_path / "run"
    plan = {
        0: [("send", 1, 0, 100, 140), ("recv", 2, 1, 150, 720)],
        1: [("recv", 0, 0, 10, 130), ("send", 2, 0, 530, 560)],
        2: [("recv", 1, 0, 20, 550), ("send", 0, 1, 700, 730)],
    }
    phases = {0: [("fwd", 0, 100)], 1: [("fwd", 130, 530)],
              2: [("prep", 25, 200), ("fwd", 550, 650)]}
    for rank in range(3):
        b = TraceBuilder(rank=rank, world_size=3)
        b.annotation("ProfilerStep#0", 0, 1000 * US)
        for name, t0, t1 in phases[rank]:
            b.annotation(name, t0 * US, t1 * US)
        for kind, peer, tag, t0, t1 in plan[rank]:
            op = "c10d::send" if kind == "send" else "c10d::recv_"
            b.cpu_op(op, t0 * US, (t0 + 5) * US, **{"Concrete Inputs": [
                "", "", str(peer), str(tag)], "Input Dims": [[[4]], [], [], []]})
            b.annotation(f"gloo:{kind}", (t0 + 1) * US, t1 * US)
        b.write(run / f"rank-{rank}.json")
    return run


def test_waits_by_hand(tmp_path: Path) -> None:
    m = p2p_waits(load_run(_pipeline(tmp_path), cache=False))
    rows = {(r["src_rank"], r["dst_rank"]): r for r in m.to_dicts()}
    assert set(rows) == {(0, 1), (1, 2), (2, 0)}
    # ready: rank 1 idle after its post (15); rank 2 busy with prep until 200; rank 0 idle
    # after its post (155: its fwd ended at 100, before it)
    assert [rows[k]["ready_ns"] for k in ((0, 1), (1, 2), (2, 0))] == [15 * US, 200 * US,
                                                                       155 * US]
    # imposed = min(send start, recv end) - ready: 100-15, 530-200, 700-155
    assert [rows[k]["imposed_ns"] for k in ((0, 1), (1, 2), (2, 0))] == [85 * US, 330 * US,
                                                                         545 * US]
    # rank 2 was itself blocked [200, 550] inside rank 0's wait [155, 700]: 350 inherited
    assert [rows[k]["inherited_ns"] for k in ((0, 1), (1, 2), (2, 0))] == [0, 0, 350 * US]
    assert [rows[k]["own_ns"] for k in ((0, 1), (1, 2), (2, 0))] == [85 * US, 330 * US,
                                                                     195 * US]
    # rank 1's cause window opens at its previous communication (receive end 130)
    assert rows[(1, 2)]["w0_ns"] == 130 * US


def test_the_late_sender_and_its_phase_are_named(tmp_path: Path) -> None:
    t = straggler_table(load_run(_pipeline(tmp_path), cache=False))
    rows = {(r["rank"], r["collective"]): r for r in t.to_dicts()}
    assert set(rows) == {(0, "p2p:send:to=1"), (1, "p2p:recv:from=0"), (1, "p2p:send:to=2"),
                         (2, "p2p:recv:from=1"), (2, "p2p:send:to=0"),
                         (0, "p2p:recv:from=2")}
    s12, r12 = rows[(1, "p2p:send:to=2")], rows[(2, "p2p:recv:from=1")]
    assert (s12["n_collectives"], s12["max_lateness_ns"], s12["others_waited_ns"],
            s12["times_last"]) == (1, 330 * US, 330 * US, 1)
    assert (r12["waited_ns"], r12["max_lateness_ns"], r12["times_last"]) == (330 * US, 0, 0)
    # rank 1's fwd (400 µs busy) against the other ranks' fwd in the step, median(100, 100)
    assert (s12["cause_phase"], s12["cause_excess_ns"]) == ("fwd", 300 * US)
    # wait it explains: min(own 330, excess 300)
    assert s12["cause_wait_ns"] == 300 * US
    # rank 0's fwd (100) is under median(400, 100) = 250; rank 2's fwd (100) too: the
    # normal pipeline waits name nobody
    assert rows[(0, "p2p:send:to=1")]["cause_phase"] is None
    assert rows[(2, "p2p:send:to=0")]["cause_phase"] is None
    assert rows[(2, "p2p:send:to=0")]["others_waited_ns"] == 545 * US
    whatif = {r: v["whatif_step_ns"] for (r, _c), v in rows.items()}
    assert whatif == {0: 1000 * US, 1: 700 * US, 2: 1000 * US}
    assert {r for (r, _c), v in rows.items() if v["straggler"]} == {1}
    assert named_stragglers(t) == [(0, 1, "fwd")]


FWD = {"rank": 1, "phase": "forward:mb=*", "ms": 1.0}
BWD = {"rank": 2, "phase": "backward:mb=*", "ms": 1.0}


def _named(delay: dict | None, seed: int) -> tuple[pl.DataFrame, list, dict]:
    frames, _ = cpu_run(4, seed=seed, allreduce=False, delay=delay)
    res = estimate_skew(frames)
    t = straggler_table(correct_frames(frames, res.model))
    return t, named_stragglers(t), manifest_injection(frames.meta["manifest"])


@pytest.mark.parametrize(("delay", "seed"), [(FWD, 0), (FWD, 1), (BWD, 2)])
def test_injected_slow_phase_in_a_send_recv_pipeline(delay: dict, seed: int) -> None:
    t, named, inj = _named(delay, seed)
    assert t.filter(pl.col("collective").str.starts_with("gloo")).is_empty()
    assert [r for _s, r, _p in named] == [delay["rank"]] * 2
    assert precision_recall(named, inj) == {"precision": 1.0, "recall": 1.0, "named": 2.0,
                                            "correct": 2.0}
    # 4 micro-batches x 1 ms each step, +-10 % phase noise around the 0.4 / 0.7 ms phases
    saved = t.filter("straggler").group_by("step").agg(
        (pl.col("step_ns") - pl.col("whatif_step_ns")).first().alias("s"))["s"]
    assert saved.min() >= 3_600 * US and saved.max() <= 4_400 * US


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_injected_delay_names_nobody(seed: int) -> None:
    t, named, _ = _named(None, seed)
    assert named == []
    # the phase noise alone stays under the naming threshold
    frac = (t["step_ns"] - t["whatif_step_ns"]) / t["step_ns"]
    assert frac.max() < STRAGGLER_MIN_SAVING
