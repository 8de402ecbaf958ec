"""Straggler cause when the slow phase overlapped the previous collective and lay in the
previous step (the shape of a CPU run whose comm thread all-reduces during compute)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.stragglers import named_stragglers, straggler_table

US = 1_000
ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL"
# rank -> (mlp(F) end µs, arrival at the step-1 collective µs)
RANKS = {0: (800, 1010), 1: (850, 1020), 2: (990, 1400)}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def test_a_slow_phase_that_overlaps_the_previous_collective_in_the_previous_step(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    for rank, (mlp_end, arrival) in RANKS.items():
        b = TraceBuilder(rank=rank, world_size=3)
        b.annotation("ProfilerStep#0", 0, 1000 * US)
        b.annotation("ProfilerStep#1", 1000 * US, 2000 * US)
        b.kernel(ALLREDUCE, 200 * US, 500 * US, stream=27)  # overlaps mlp(F) from 300 µs
        b.annotation("mlp(F)", 300 * US, mlp_end * US)
        b.kernel(ALLREDUCE, arrival * US, 1500 * US, stream=27)
        b.write(run / f"rank-{rank}.json")
    t = straggler_table(load_run(run, cache=False))
    row = t.filter((pl_step := t["step"] == 1) & (t["rank"] == 2)).to_dicts()[0]
    assert pl_step.sum() == 3
    # rank 2's mlp(F) started before the previous collective ended (500 µs) and ended in
    # step 0, before its late arrival in step 1: 690 µs vs median(500, 550) = 525 µs
    assert (row["cause_phase"], row["cause_excess_ns"]) == ("mlp(F)", 165 * US)
    # arrival 1400 vs the second-latest 1020: 380 µs of the 1000 µs step saved
    assert row["whatif_step_ns"] == 620 * US and row["straggler"]
    assert named_stragglers(t) == [(1, 2, "mlp(F)")]
