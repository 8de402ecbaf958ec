"""Executor correctness: pipeline losses and gradients equal a single-process run.

Tolerance: everything runs in float64 on tiny Linear+tanh stages. The pipeline sums the
same per-micro-batch contributions as the reference, only in another order (deferred
weight-grad closures, DualPipe's two stage copies added at the end), so differences
are pure rounding: a few ulps of values O(1), far below rtol 1e-10 / atol 1e-12. A
wrong schedule (a missing or doubled micro-batch, a gradient routed to the wrong
stage, a lost W) changes gradients at O(1e-2) relative, so the bound cannot hide it.
"""

from __future__ import annotations

import pytest
import torch

from overlapscope.profiler.schedules.harness import run_toy_pipelines
from overlapscope.profiler.schedules.toy import ToyStage, mse, toy_batch

TOY = {"dim": 8, "depth": 2, "mb_size": 3, "seed": 0}
N_STAGES = {"dualpipe": 1, "dualpipev": 2, "1f1b": 1, "zb1p": 1}  # stages per rank


def reference(n_stages: int, n_micro: int) -> tuple[list[float], list[list[torch.Tensor]]]:
    """Plain autograd on the whole toy model: per-mb losses, grads of sum of losses."""
    stages = [ToyStage(TOY["dim"], TOY["depth"], TOY["seed"], s) for s in range(n_stages)]
    xs, ys = toy_batch(n_micro, TOY["mb_size"], TOY["dim"], TOY["seed"])
    losses = []
    for x, y in zip(xs, ys, strict=True):
        for st in stages:
            x = st(x)
        losses.append(mse(x, y))
    torch.stack(losses).sum().backward()
    return [float(v) for v in losses], [[p.grad for p in st.parameters()] for st in stages]


def check(n_ranks: int, cases: list[tuple[str, int]]) -> None:
    results = run_toy_pipelines(n_ranks, cases, **TOY)
    for (name, n_micro), got in results.items():
        n_stages = N_STAGES[name] * n_ranks
        ref_losses, ref_grads = reference(n_stages, n_micro)
        assert sorted(got["losses"]) == list(range(n_micro)), name
        for mb, loss in got["losses"].items():
            assert float(loss) == pytest.approx(ref_losses[mb], rel=1e-12), (name, mb)
        assert sorted(got["grads"]) == list(range(n_stages)), name
        for s in range(n_stages):
            for g, r in zip(got["grads"][s], ref_grads[s], strict=True):
                torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # spawns gloo ranks (multi-process)
def test_pp4_m8_all_schedules() -> None:
    check(4, [("dualpipe", 8), ("dualpipev", 8), ("1f1b", 8), ("zb1p", 8)])


@pytest.mark.slow
def test_pp8_m20_all_schedules() -> None:
    check(8, [("dualpipe", 20), ("dualpipev", 20), ("1f1b", 20), ("zb1p", 20)])
